/**
 * `npm run dashboards`: writes the Grafana dashboards, their ConfigMap and the alert rules generated from
 * src/observability/dashboards/. With `--check`, writes nothing and fails when a committed file differs.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generatedFiles } from '../observability/dashboards/files.ts';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const check = process.argv.includes('--check');
const stale: string[] = [];
for (const [path, content] of generatedFiles()) {
  const absolute = resolve(root, path);
  if (check) {
    const committed = await readFile(absolute, 'utf8').catch(() => undefined);
    if (committed !== content) stale.push(path);
    continue;
  }
  await mkdir(dirname(absolute), { recursive: true });
  await writeFile(absolute, content);
  console.log(`wrote ${path}`);
}
if (stale.length > 0) {
  console.error(`out of date (run npm run dashboards): ${stale.join(', ')}`);
  process.exitCode = 1;
}
