/**
 * How the entry points (`npm start`, `npm run trainer`) end: the first SIGINT/SIGTERM runs `close` and exits with
 * its outcome; a second signal exits at once, for an operator who does not want to wait.
 *
 * A process started with an IPC channel (the trainer as the gateway's child, a gateway a harness started) also
 * shuts down when that channel closes: its parent is gone, however it went (a signal, a crash, SIGKILL), and
 * nothing is left to stop it.
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
  // Not a second signal: a parent that sent SIGTERM and then exited still gets the graceful shutdown it asked for.
  const parentGone = () => signals === 0 && stop('parent process gone');
  if (process.send && !process.connected) parentGone();
  else if (process.send) process.once('disconnect', parentGone);
}
