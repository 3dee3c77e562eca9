/**
 * The entry URL of a worker thread written in TypeScript: under tsx (development, tests) a bootstrap that registers
 * tsx in the worker first, since workers do not inherit the parent's loader; compiled, the module's .js sibling.
 */
export function workerEntry(tsModule: URL): URL {
  if (!import.meta.url.endsWith('.ts')) return new URL(tsModule.href.replace(/\.ts$/, '.js'));
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(tsModule.href)});`;
  return new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`);
}
