/** Summaries shared by the benchmark sections. */
export const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

export function round(value: number, digits = 1): number {
  return Number(value.toFixed(digits));
}
