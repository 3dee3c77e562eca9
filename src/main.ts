/** `npm start`: serve the configured model until SIGINT/SIGTERM, then shut down gracefully. */
import { startGateway } from './gateway/server.ts';

try {
  const gateway = await startGateway(process.env);
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) process.exit(1);
    process.stderr.write(`${signal}: finishing in-flight requests, then exiting\n`);
    gateway.close().then(
      () => process.exit(0),
      (error: Error) => {
        process.stderr.write(`shutdown failed: ${error.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exit(1);
}
