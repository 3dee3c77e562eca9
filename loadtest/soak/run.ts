/**
 * `npm run soak -- --minutes N [--json]`: runs the soak (loadtest/soak/soak.ts) and prints its report as text, or
 * as one JSON object with --json; exits 1 if any check failed. Options: loadtest/README.md, "Soak".
 */
import { parseArgs } from 'node:util';
import { STORIES_HF_DIR } from '../../tests/support/models.ts';
import { formatSoakReport } from './report.ts';
import { runSoak } from './soak.ts';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string' },
    requests: { type: 'string' },
    adapters: { type: 'string', default: '120' },
    'http-clients': { type: 'string', default: '6' },
    'websocket-clients': { type: 'string', default: '2' },
    'base-clients': { type: 'string', default: '2' },
    'max-batch': { type: 'string', default: '4' },
    seed: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});

function numberFlag(name: keyof typeof values, min: number, integer = true): number {
  const raw = String(values[name]);
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new Error(`--${name} must be ${integer ? 'a whole number' : 'a number'} of at least ${min}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

if ((values.minutes === undefined) === (values.requests === undefined)) throw new Error('give exactly one of --minutes N and --requests N');
const report = await runSoak({
  modelDir: STORIES_HF_DIR,
  stopAfter: values.minutes !== undefined ? { minutes: numberFlag('minutes', 0.05, false) } : { requests: numberFlag('requests', 1) },
  adapters: numberFlag('adapters', 1),
  httpClients: numberFlag('http-clients', 0),
  webSocketClients: numberFlag('websocket-clients', 0),
  baseModelClients: numberFlag('base-clients', 0),
  maxBatch: numberFlag('max-batch', 2),
  seed: numberFlag('seed', 0),
  rssDriftLimit: 0.1,
  log: (line) => process.stderr.write(`${line}\n`),
});
process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatSoakReport(report)}\n`);
process.exitCode = report.failures.length === 0 ? 0 : 1;
