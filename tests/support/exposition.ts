/** The Prometheus text exposition format, read the way a scraper reads it, for tests that check `/metrics`. */
import assert from 'node:assert/strict';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Scrape {
  types: Map<string, string>;
  samples: Sample[];
}

/** Reads the Prometheus text exposition format the way a scraper does: TYPE comments and sample lines. */
export function parseScrape(text: string): Scrape {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1], type[2]);
    if (line === '' || line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(sample, `unparseable sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (sample[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) labels[key] = value;
    samples.push({ name: sample[1], labels, value: Number(sample[3]) });
  }
  return { types, samples };
}

export function samplesOf(scrape: Scrape, name: string): Sample[] {
  return scrape.samples.filter((sample) => sample.name === name);
}

/** The value of the one sample whose labels are exactly `labels`. */
export function valueOf(scrape: Scrape, name: string, labels: Record<string, string>): number {
  const matches = samplesOf(scrape, name).filter(
    (sample) => JSON.stringify(Object.entries(sample.labels).sort()) === JSON.stringify(Object.entries(labels).sort()),
  );
  assert.equal(matches.length, 1, `expected one ${name} sample with labels ${JSON.stringify(labels)}`);
  return matches[0].value;
}
