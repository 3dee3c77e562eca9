/** The slot layouts a test gateway keeps on disk (src/engine/layout-cache.ts), found by what they were made from. */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSafetensors } from '../../src/formats/safetensors.ts';
import { ENTRY_SUFFIX } from '../../src/engine/layout-cache.ts';
import { adapterCacheKey } from '../../src/gateway/model-resolver.ts';
import type { TestGateway } from './gateway.ts';

/** The cache keys of the adapter versions whose layouts are kept in `dir` (each entry's label names its key). */
export async function layoutKeys(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const keys: string[] = [];
  for (const name of names.filter((n) => n.endsWith(ENTRY_SUFFIX))) {
    const { metadata } = parseSafetensors(new Uint8Array(await readFile(join(dir, name))));
    keys.push((JSON.parse(metadata.label) as { key: string }).key);
  }
  return keys;
}

/**
 * Waits until the layout of the latest version of `tenant/adapter` is kept: an upload has it made in the engine's
 * load turns after the upload is answered, so a test that compares the gateway's files before and after waits first.
 */
export async function layoutPrepared(gateway: TestGateway, tenant: string, adapter: string): Promise<string> {
  const key = adapterCacheKey(gateway.services.store.resolve(tenant, adapter)!);
  const dir = gateway.services.settings.engine.adapterLayoutCache!.dir;
  while (!(await layoutKeys(dir)).includes(key)) await new Promise((resolve) => setTimeout(resolve, 20));
  return key;
}
