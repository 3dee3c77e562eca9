/**
 * Checks PromQL against what a process really exports: every series it names must be in a `/metrics` scrape, with
 * every label it filters or groups on, and every exact label value it asks for.
 */
import type { Scrape } from './exposition.ts';
import { parsePromql, withVariablesResolved, type SeriesSelector } from './promql.ts';

/** Labels Prometheus adds to every scraped series; they never appear in `/metrics` itself. */
const TARGET_LABELS = new Set(['job', 'instance']);
/** Series Prometheus itself writes for every scrape. */
const SCRAPE_SERIES = new Set(['up']);

/** Problems found, one line each; empty when the expression only uses what the scrape has. */
export function driftProblems(expr: string, scrape: Scrape): string[] {
  const problems: string[] = [];
  const parsed = parsePromql(withVariablesResolved(expr, '1m'));
  const samplesFor = (selector: SeriesSelector) => scrape.samples.filter((sample) => sample.name === selector.metric);
  for (const selector of parsed.selectors) {
    if (SCRAPE_SERIES.has(selector.metric)) continue;
    const samples = samplesFor(selector);
    if (samples.length === 0) {
      problems.push(`${selector.metric} is not exported`);
      continue;
    }
    for (const { label, op, value } of selector.matchers) {
      if (TARGET_LABELS.has(label)) continue;
      if (!samples.some((sample) => label in sample.labels)) problems.push(`${selector.metric} has no label ${label}`);
      else if (op === '=' && value !== '' && !samples.some((sample) => sample.labels[label] === value)) {
        problems.push(`${selector.metric} has no series with ${label}="${value}"`);
      }
    }
  }
  for (const grouping of parsed.groupings) {
    for (const label of grouping.labels) {
      if (TARGET_LABELS.has(label)) continue;
      for (const selector of grouping.selectors) {
        const samples = samplesFor(selector);
        if (samples.length > 0 && !samples.some((sample) => label in sample.labels)) {
          problems.push(`grouping by ${label}, but ${selector.metric} has no such label`);
        }
      }
    }
  }
  return problems;
}
