/**
 * The HTTP surface: health and metrics without credentials, the OpenAI-compatible API and adapter routes for
 * tenants (and admins), admin routes and the live dashboard page for admins only. Routes live in src/api/; this file only wires them.
 */
import { Hono, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { registerAdapterRoutes } from '../api/adapters.ts';
import { registerCompletionRoutes } from '../api/completions.ts';
import { registerDashboardRoutes } from '../api/dashboard.ts';
import { registerFileRoutes } from '../api/files.ts';
import { registerFineTuningRoutes } from '../api/fine-tuning.ts';
import { registerModelRoutes } from '../api/models.ts';
import { installErrorHandlers, invalidApiKey, payloadTooLarge, permissionDenied } from './errors.ts';
import type { GatewayEnv, GatewayServices } from './services.ts';

const MULTIPART_OVERHEAD_BYTES = 64 * 1024;

export function createApp(services: GatewayServices): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  const { logger } = services;
  installErrorHandlers(app, {
    logUnexpected: (error, request) =>
      logger.error('unexpected error', { ...request, error: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
    onErrorAnswer: (error) => services.metrics.countErrorAnswer({ status: error.status, code: error.code }),
  });
  app.use('*', async (c, next) => {
    const started = performance.now();
    await next();
    const principal = c.get('principal');
    // Probes, scrapes and the live page's polls arrive every few seconds: only worth a line when debugging.
    const routine = ['/health', '/ready', '/metrics', '/dashboard/data'].includes(c.req.path);
    (routine ? logger.debug : logger.info)('request', {
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      tenant: principal ? (principal.kind === 'admin' ? 'admin' : principal.tenant.name) : undefined,
      ms: Math.round(performance.now() - started),
    });
  });

  // Liveness fails only when the engine thread is gone, which nothing but a restart can fix.
  app.get('/health', (c) => (services.engine.alive ? c.json({ status: 'ok' }) : c.json({ status: 'engine_failed' }, 503)));
  app.get('/ready', (c) => {
    if (!services.engine.alive) return c.json({ status: 'engine_failed' }, 503);
    if (services.draining) return c.json({ status: 'draining' }, 503);
    // The checksum of the base weights recorded at load: identical on every replica serving the same model.
    return c.json({ status: 'ready', model: services.models.baseName, checksum: `sha256:${services.engine.info.checksum}` });
  });
  app.get('/metrics', async (c) => c.body(await services.metrics.metricsText(), 200, { 'content-type': services.metrics.contentType }));

  app.use('/v1/*', authenticate(services, 'tenant-or-admin'));
  app.use('/admin/*', authenticate(services, 'admin'));
  // Adapter uploads carry weights; everything else is JSON and gets the small limit.
  app.use('/v1/adapters/*', limitBody(services.settings.maxAdapterBytes));
  app.use('/admin/*', limitBody(services.settings.maxBodyBytes));
  // Dataset uploads: the file plus the multipart framing around it; the files route checks the file's own size.
  app.post('/v1/files', limitBody(services.settings.training.maxFileBytes + MULTIPART_OVERHEAD_BYTES));
  app.use('/v1/*', async (c, next) =>
    c.req.path.startsWith('/v1/adapters') || (c.req.path === '/v1/files' && c.req.method === 'POST')
      ? next()
      : limitBody(services.settings.maxBodyBytes)(c, next),
  );

  registerModelRoutes(app, services);
  registerCompletionRoutes(app, services);
  registerAdapterRoutes(app, services);
  registerDashboardRoutes(app, services);
  registerFileRoutes(app, services);
  registerFineTuningRoutes(app, services);
  return app;
}

function authenticate(services: GatewayServices, required: 'tenant-or-admin' | 'admin'): MiddlewareHandler<GatewayEnv> {
  return async (c, next) => {
    const principal = services.authenticator.authenticate(c.req.header('authorization'));
    if (!principal) throw invalidApiKey();
    if (required === 'admin' && principal.kind !== 'admin') throw permissionDenied('This route needs an admin key.');
    c.set('principal', principal);
    await next();
  };
}

function limitBody(maxSize: number): MiddlewareHandler<GatewayEnv> {
  return bodyLimit({
    maxSize,
    onError: () => {
      throw payloadTooLarge(maxSize);
    },
  });
}
