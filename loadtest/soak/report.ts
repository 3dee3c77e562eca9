/** The soak's report: what it measured, the checks that failed, and the report as text. */

export interface SoakReport {
  settings: {
    stopAfter: string;
    adapters: number;
    clients: { http: number; webSocket: number; baseModel: number };
    maxBatch: number;
    maxQueue: number;
    seed: number;
    /** The RSS drift limit; null when the run is too short for it to mean anything (it is then only reported). */
    rssDriftLimit: number | null;
  };
  durationSeconds: number;
  requests: {
    sent: number;
    /**
     * Per tenant, answers by status as the clients saw them and as `gateway_requests_total` counts them. A 404 is
     * counted there only when the version vanished after the model resolved, so that status may count fewer.
     */
    countedByClients: Record<string, Record<string, number>>;
    countedByGateway: Record<string, Record<string, number>>;
    /** HTTP error answers by "status code", from the clients and from `gateway_errors_total`. */
    httpErrorsSeen: Record<string, number>;
    httpErrorsCounted: Record<string, number>;
  };
  streams: { completed: number; disconnectedOnPurpose: number; cancelledOnPurpose: number; withoutTerminalEvent: number };
  churn: { published: number; versionsDeleted: number; adaptersDeleted: number };
  greedy: {
    checked: number;
    /** Outputs of streams cut short on purpose, checked as prefixes. */
    prefixesChecked: number;
    /** Checks where more than one version may have answered (a publish or delete raced the request). */
    ambiguous: number;
    /** Checked outputs that differ from the base model's: how many checks an adapter mix-up would have failed. */
    distinctFromBase: number;
    mismatches: number;
    soloRuns: number;
  };
  serverErrors: number;
  rss: { warmMiB: number; finalMiB: number; drift: number; samples: number };
  idle: { fdsBefore: number; fdsAfter: number; runningAfter: number; waitingAfter: number };
  /** `refusedAfterSigterm`: how a request sent after the signal was answered (its status, or why none came). */
  shutdown: { exitCode: number | string; inFlightAtSigterm: number; endedCleanly: number; refusedAfterSigterm: string };
  failures: string[];
}

/** Every check of the soak; each failed one becomes a line of `failures`. */
export function checkReport(report: SoakReport, details: string[]): string[] {
  const failures = [...details];
  const { requests, streams, idle, rss, shutdown, greedy } = report;
  if (streams.withoutTerminalEvent > 0) failures.push(`${streams.withoutTerminalEvent} streams ended without a terminal event`);
  if (greedy.mismatches > 0) failures.push(`${greedy.mismatches} greedy outputs differ from the solo output of every version they may have resolved to`);
  if (report.serverErrors > 0) failures.push(`${report.serverErrors} server errors (5xx other than 503 overloaded, or error events inside streams)`);
  const limit = report.settings.rssDriftLimit;
  if (limit !== null && Math.abs(rss.drift) >= limit) failures.push(`RSS drifted ${(rss.drift * 100).toFixed(1)} % after warm-up (limit ${limit * 100} %)`);
  if (idle.fdsAfter !== idle.fdsBefore) failures.push(`open file descriptors: ${idle.fdsBefore} idle before the load, ${idle.fdsAfter} after it`);
  if (idle.runningAfter !== 0 || idle.waitingAfter !== 0) failures.push(`engine rows after the load: ${idle.runningAfter} running, ${idle.waitingAfter} waiting`);
  if (!countsAgree(requests.countedByClients, requests.countedByGateway)) {
    failures.push(`gateway_requests_total ${JSON.stringify(requests.countedByGateway)} differs from the clients' ${JSON.stringify(requests.countedByClients)}`);
  }
  if (!sameCounts({ all: requests.httpErrorsSeen }, { all: requests.httpErrorsCounted })) {
    failures.push(`gateway_errors_total ${JSON.stringify(requests.httpErrorsCounted)} differs from the clients' ${JSON.stringify(requests.httpErrorsSeen)}`);
  }
  if (shutdown.exitCode !== 0) failures.push(`the gateway exited with ${shutdown.exitCode} after SIGTERM`);
  if (!/^503 overloaded$|ECONNREFUSED|ECONNRESET/.test(shutdown.refusedAfterSigterm)) {
    failures.push(`a request sent after SIGTERM was not refused (503, or the connection refused or reset): ${shutdown.refusedAfterSigterm}`);
  }
  if (shutdown.endedCleanly !== shutdown.inFlightAtSigterm) {
    failures.push(`${shutdown.inFlightAtSigterm - shutdown.endedCleanly} of ${shutdown.inFlightAtSigterm} streams in flight at SIGTERM did not end cleanly`);
  }
  return failures;
}

/** Equal for every status, except that the gateway may count fewer 404s (see `countedByGateway`). */
function countsAgree(clients: Record<string, Record<string, number>>, gateway: Record<string, Record<string, number>>): boolean {
  const without404 = (counts: Record<string, Record<string, number>>) =>
    Object.fromEntries(Object.entries(counts).map(([tenant, byStatus]) => [tenant, { ...byStatus, 404: 0 }]));
  const fewer404 = Object.entries(gateway).every(([tenant, byStatus]) => (byStatus[404] ?? 0) <= (clients[tenant]?.[404] ?? 0));
  return fewer404 && sameCounts(without404(clients), without404(gateway));
}

function sameCounts(a: Record<string, Record<string, number>>, b: Record<string, Record<string, number>>): boolean {
  const flat = (counts: Record<string, Record<string, number>>) =>
    JSON.stringify(
      Object.entries(counts)
        .flatMap(([group, byKey]) => Object.entries(byKey).filter(([, n]) => n > 0).map(([key, n]) => `${group}/${key}=${n}`))
        .sort(),
    );
  return flat(a) === flat(b);
}

export function formatSoakReport(report: SoakReport): string {
  const { settings, requests, streams, churn, greedy, rss, idle, shutdown } = report;
  const rssLimit = settings.rssDriftLimit === null ? 'not checked in so short a run' : `limit ${settings.rssDriftLimit * 100} %`;
  const counts = (byTenant: Record<string, Record<string, number>>) =>
    Object.entries(byTenant).map(([tenant, byStatus]) => `${tenant} ${JSON.stringify(byStatus)}`).join('; ');
  return [
    `soak ${report.failures.length === 0 ? 'PASSED' : 'FAILED'}: ${settings.stopAfter}, ${report.durationSeconds} s of load`,
    `setup               ${settings.adapters} adapters (Zipf 1.1); clients: ${settings.clients.http} HTTP + ${settings.clients.webSocket} WebSocket on adapters, ` +
      `${settings.clients.baseModel} HTTP on the base model; MAX_BATCH_SIZE ${settings.maxBatch}, MAX_QUEUE ${settings.maxQueue}; seed ${settings.seed}`,
    `requests            ${requests.sent} sent; by status (clients) ${counts(requests.countedByClients)}`,
    `                    by status (gateway_requests_total) ${counts(requests.countedByGateway)}`,
    `                    HTTP errors (clients) ${JSON.stringify(requests.httpErrorsSeen)}; (gateway_errors_total) ${JSON.stringify(requests.httpErrorsCounted)}`,
    `streams             ${streams.completed} completed, ${streams.disconnectedOnPurpose} client disconnects mid-stream, ${streams.cancelledOnPurpose} WebSocket cancels, ` +
      `${streams.withoutTerminalEvent} without a terminal event`,
    `adapter churn       ${churn.published} versions published, ${churn.versionsDeleted} versions and ${churn.adaptersDeleted} adapters deleted`,
    `greedy outputs      ${greedy.checked} whole outputs and ${greedy.prefixesChecked} cut-short prefixes checked against ${greedy.soloRuns} solo runs: ` +
      `${greedy.mismatches} mismatches; ${greedy.distinctFromBase} differ from the base model's output; ${greedy.ambiguous} raced a publish or delete`,
    `server errors       ${report.serverErrors}`,
    `RSS                 ${rss.warmMiB} MiB after warm-up, ${rss.finalMiB} MiB at the end: drift ${(rss.drift * 100).toFixed(1)} % (${rssLimit}, ${rss.samples} samples)`,
    `idle after the load engine rows ${idle.runningAfter} running, ${idle.waitingAfter} waiting; open fds ${idle.fdsBefore} before, ${idle.fdsAfter} after`,
    `SIGTERM             exit ${shutdown.exitCode}; ${shutdown.endedCleanly}/${shutdown.inFlightAtSigterm} streams in flight ended cleanly; a request after it: ${shutdown.refusedAfterSigterm}`,
    ...report.failures.map((failure) => `FAIL ${failure}`),
  ].join('\n');
}
