/**
 * How the entry points (`npm start`, `npm run trainer`) end: the first SIGINT/SIGTERM runs `close` and exits with
 * its outcome; a second signal exits at once, for an operator who does not want to wait.
 */
export function shutdownOnSignals(close: () => Promise<unknown>, whatCloseDoes: string): void {
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) process.exit(1);
    process.stderr.write(`${signal}: ${whatCloseDoes}\n`);
    close().then(
      () => process.exit(0),
      (error: Error) => {
        process.stderr.write(`shutdown failed: ${error.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}
