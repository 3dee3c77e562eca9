/** What every fuzz target shares: how it is run, and mutations of valid JSON documents. */
import fc from 'fast-check';

export interface FuzzRun {
  numRuns: number;
  seed: number;
}

export interface FuzzTarget {
  name: string;
  /** Runs the target's properties; throws fast-check's report (with the seed and the shrunk input) on failure. */
  run(options: FuzzRun): Promise<void> | void;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Every path (object keys and array indices) inside a JSON value, the root included. */
function paths(value: Json, prefix: (string | number)[] = []): (string | number)[][] {
  const inner =
    Array.isArray(value) ? value.flatMap((item, index) => paths(item, [...prefix, index]))
    : value !== null && typeof value === 'object' ? Object.entries(value).flatMap(([key, item]) => paths(item, [...prefix, key]))
    : [];
  return [prefix, ...inner];
}

/** The value with the item at `path` replaced (removed when `replacement` is undefined); unchanged where an
 * earlier edit left no such path. */
function replaced(value: Json, path: (string | number)[], replacement: Json | undefined): Json | undefined {
  if (path.length === 0) return replacement;
  const [head, ...rest] = path;
  if (Array.isArray(value) && typeof head === 'number' && head < value.length) {
    const copy = [...value];
    const item = replaced(copy[head], rest, replacement);
    if (item === undefined) copy.splice(head, 1);
    else copy[head] = item;
    return copy;
  }
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && typeof head === 'string') {
    const copy = { ...value };
    const item = head in copy ? replaced(copy[head], rest, replacement) : rest.length === 0 ? replacement : undefined;
    if (item === undefined) delete copy[head];
    else copy[head] = item;
    return copy;
  }
  return value;
}

/** Values that tend to break validators: wrong types, boundaries, huge and odd numbers, traversal strings. */
const hostileValue: fc.Arbitrary<Json> = fc.oneof(
  fc.jsonValue() as fc.Arbitrary<Json>,
  fc.constantFrom<Json>(0, -1, 1e308, -1e308, 2 ** 53, 0.5, '', '../../etc/passwd', 'a'.repeat(5000), [], {}, null, true, '__proto__', 'constructor'),
  fc.integer() as fc.Arbitrary<Json>,
);

/**
 * A valid document with one to three values replaced by hostile ones or removed, or an extra key added:
 * most inputs stay close enough to valid to reach deep validation code.
 */
export function jsonMutation(valid: unknown): fc.Arbitrary<unknown> {
  const document = valid as Json;
  const all = paths(document);
  const edit = fc.tuple(fc.nat({ max: all.length - 1 }), fc.oneof(hostileValue, fc.constant(undefined)), fc.string({ maxLength: 12 }), fc.boolean());
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) => {
    let result: Json | undefined = document;
    for (const [index, value, key, addKey] of edits) {
      if (result === undefined) break;
      const path = all[index];
      result = addKey && value !== undefined ? replaced(result, [...path.slice(0, -1), key], value) : replaced(result, path, value);
    }
    return result ?? null;
  });
}
