import assert from 'node:assert/strict';
import { it } from 'node:test';
import { runSoak } from '../loadtest/soak/soak.ts';
import { formatSoakReport } from '../loadtest/soak/report.ts';
import { STORIES_HF_DIR } from './support/models.ts';

// The soak's short version: a fixed number of requests, not a duration, so it does the same work however fast the
// machine is. Its RSS drift is reported but not checked: a run this short ends before the process has warmed up.
it('a short soak of a real gateway process passes every check', async () => {
  const lines: string[] = [];
  const report = await runSoak({
    modelDir: STORIES_HF_DIR,
    stopAfter: { requests: 120 },
    adapters: 100,
    httpClients: 6,
    webSocketClients: 2,
    baseModelClients: 2,
    maxBatch: 4,
    seed: 7,
    rssDriftLimit: null,
    log: (line) => lines.push(line),
  });
  const text = `${formatSoakReport(report)}\n${lines.join('\n')}`;
  assert.deepEqual(report.failures, [], text);

  assert.equal(report.requests.sent, 120);
  const answered = Object.values(report.requests.countedByClients).flatMap((byStatus) => Object.values(byStatus));
  assert.ok(answered.reduce((a, b) => a + b, 0) <= 120, text);
  // What the run exercised: each of these is a count of work the harness does at fixed intervals.
  assert.ok(report.churn.published > 100 && report.churn.versionsDeleted + report.churn.adaptersDeleted > 0, text);
  assert.ok(report.greedy.checked > 0 && report.greedy.distinctFromBase > 0, text);
  assert.ok(report.streams.disconnectedOnPurpose + report.streams.cancelledOnPurpose > 0, text);
  assert.ok(report.shutdown.inFlightAtSigterm > 0, text);
  assert.ok(report.rss.samples > 0 && report.rss.finalMiB > 0, text);
  assert.ok(report.idle.fdsBefore > 0, text);
});
