/**
 * Temporary ADAPTERS_DIRs for store tests, removed after the test once every store opened on them has stopped (a
 * running store may be saving its catalog snapshot into the directory).
 */
import type { TestContext } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

interface Stoppable {
  stop(): Promise<void>;
}

const openedStores = new WeakMap<TestContext, Stoppable[]>();

/** A fresh `adapters` path inside a new temporary directory named after `prefix`. */
export async function tempStoreRoot(t: TestContext, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(async () => {
    await Promise.all((openedStores.get(t) ?? []).map((store) => store.stop()));
    await rm(dir, { recursive: true, force: true });
  });
  return join(dir, 'adapters');
}

/** Stops `store` when the test ends, before its directory is removed. */
export function stopAfterTest<S extends Stoppable>(t: TestContext, store: S): S {
  openedStores.set(t, [...(openedStores.get(t) ?? []), store]);
  return store;
}
