/** `npm run trainer`: the fine-tuning sidecar, until SIGINT/SIGTERM (running jobs pause and resume on restart). */
import { startTrainer } from './training/service/trainer-service.ts';
import { loadTrainerSettings } from './training/service/trainer-settings.ts';

try {
  const trainer = await startTrainer(loadTrainerSettings(process.env));
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) process.exit(1);
    process.stderr.write(`${signal}: pausing running jobs after their current step, then exiting\n`);
    trainer.close().then(
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
