/** The gateway the route fuzz targets talk to: the test deployment, with its log watched for unexpected errors. */
import { BASE_MODEL, KEYS, startTestGateway } from '../tests/support/gateway.ts';
import type { FuzzedGateway } from './http-routes.ts';

export async function startFuzzedGateway(): Promise<FuzzedGateway & { stop(): Promise<void>; assertNoUnexpectedErrors(): void }> {
  const errors: string[] = [];
  // Long runs send thousands of frames on one socket: the rate limit would drop them before they are parsed.
  const gateway = await startTestGateway({ maxConcurrentRequests: 64 }, { WS_MESSAGES_PER_MINUTE: '1000000' }, (line) => {
    if (JSON.parse(line).level === 'error') errors.push(line);
  });
  return {
    url: gateway.url,
    tenantKey: KEYS.acme,
    tenant: 'acme',
    adminKey: KEYS.admin,
    baseModel: BASE_MODEL,
    config: gateway.services.engine.info.config,
    adaptersDir: gateway.adaptersDir,
    stop: () => gateway.stop(),
    assertNoUnexpectedErrors: () => {
      if (errors.length > 0) throw new Error(`the gateway logged unexpected errors:\n${errors.splice(0).join('\n')}`);
    },
  };
}
