/**
 * A worker thread's entry point for a module of this project, given by its TypeScript URL. Running from
 * TypeScript sources, module loader hooks are per thread, so the worker first registers tsx and then imports the
 * TypeScript module; compiled, it is the .js file itself.
 */
export function workerEntry(module: URL): URL {
  if (!import.meta.url.endsWith('.ts')) return new URL(module.href.replace(/\.ts$/, '.js'));
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(module.href)});`;
  return new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`);
}
