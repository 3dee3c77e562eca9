/**
 * Entry points of worker threads. Running from TypeScript sources, module loader hooks are per thread, so the
 * worker first registers tsx and then imports the TypeScript entry; compiled, it is the .js file itself.
 */
export function workerEntry(name: string, base: string): URL {
  if (!base.endsWith('.ts')) return new URL(`./${name}.js`, base);
  const entry = new URL(`./${name}.ts`, base).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(entry)});`;
  return new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`);
}
