/**
 * `npm start`: serve the configured model until SIGINT/SIGTERM, then shut down gracefully. With TRAINER=child (the
 * default) the fine-tuning sidecar runs as a child process; with TRAINER=external it is started separately.
 */
import { startGateway } from './gateway/server.ts';
import { superviseTrainer } from './training/service/trainer-child.ts';
import { shutdownOnSignals } from './shutdown-on-signals.ts';

try {
  const gateway = await startGateway(process.env);
  const { settings, logger, models } = gateway.services;
  const trainer =
    settings.training.trainer === 'child'
      ? superviseTrainer({ ...process.env, MODEL_PATH: gateway.modelPath, MODEL_NAME: models.baseName }, logger, (published) =>
          gateway.preloadAdapter(published.tenant, published.adapter, published.version),
        )
      : undefined;
  shutdownOnSignals(() => Promise.all([gateway.close(), trainer?.stop()]), 'finishing in-flight requests, then exiting');
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exit(1);
}
