/** Summaries shared by the benchmark sections. */
import { median } from '../statistics.ts';

export { median };

export function round(value: number, digits = 1): number {
  return Number(value.toFixed(digits));
}

/** Per-trial ratios `numerators[i] / denominators[i]`: their median and range, to two decimals. */
export function ratioSummary(numerators: number[], denominators: number[]) {
  const ratios = numerators.map((value, i) => value / denominators[i]);
  return { median: round(median(ratios), 2), range: [round(Math.min(...ratios), 2), round(Math.max(...ratios), 2)] };
}
