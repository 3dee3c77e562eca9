/** `npm run trainer`: the fine-tuning sidecar, until SIGINT/SIGTERM (running jobs pause and resume on restart). */
import { startTrainer } from './training/service/trainer-service.ts';
import { loadTrainerSettings } from './training/service/trainer-settings.ts';
import { shutdownOnSignals } from './shutdown-on-signals.ts';

try {
  const trainer = await startTrainer(loadTrainerSettings(process.env));
  shutdownOnSignals(() => trainer.close(), 'pausing running jobs after their current step, then exiting');
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exit(1);
}
