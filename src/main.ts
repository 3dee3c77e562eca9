/**
 * `npm start`: serve the configured model until SIGINT/SIGTERM, then shut down gracefully. With TRAINER=child (the
 * default) the fine-tuning sidecar runs as a child process; with TRAINER=external it is started separately.
 */
import { startGateway } from './gateway/server.ts';
import { superviseTrainer } from './training/service/trainer-child.ts';

try {
  const gateway = await startGateway(process.env);
  const { settings, logger, models } = gateway.services;
  const trainer =
    settings.training.trainer === 'child'
      ? superviseTrainer({ ...process.env, MODEL_PATH: gateway.modelPath, MODEL_NAME: models.baseName }, logger)
      : undefined;
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) process.exit(1);
    process.stderr.write(`${signal}: finishing in-flight requests, then exiting\n`);
    Promise.all([gateway.close(), trainer?.stop()]).then(
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
