/**
 * `GET /dashboard`: a live page of the gateway's key figures for operators, with no build step and no Prometheus.
 * The page (`dashboard-page/`) polls `GET /dashboard/data`, a snapshot of the gateway's own metrics. Admins only:
 * the browser asks for the admin key itself (HTTP Basic, key as the password) and sends it with the page's
 * requests; `Authorization: Bearer <admin key>` works too. The snapshot holds counts and names, never a prompt or
 * an output.
 */
import { readFileSync } from 'node:fs';
import type { Context, Hono, MiddlewareHandler } from 'hono';
import { invalidApiKey, permissionDenied } from '../gateway/errors.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';
import { liveSnapshot, type TenantActivity } from '../observability/live-snapshot.ts';

const PAGE_DIR = new URL('./dashboard-page/', import.meta.url);

/** The page loads only its own script and style and talks only to this origin. */
const PAGE_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

function requireAdmin(services: GatewayServices): MiddlewareHandler<GatewayEnv> {
  return async (c, next) => {
    const principal = services.authenticator.authenticatePage(c.req.header('authorization'));
    if (!principal) {
      throw invalidApiKey(
        'The dashboard needs an admin key: enter it as the password when the browser asks (any user name), or send "Authorization: Bearer <admin key>".',
        'Basic realm="peft-gateway dashboard", charset="UTF-8"',
      );
    }
    if (principal.kind !== 'admin') throw permissionDenied('The dashboard needs an admin key.');
    c.set('principal', principal);
    await next();
  };
}

function tenantActivity(services: GatewayServices): TenantActivity[] {
  return [...services.limiters].map(([tenant, limiter]) => {
    const waiting = services.queuedByTenant.get(tenant) ?? 0;
    return { tenant, running: Math.max(0, limiter.activeRequests - waiting), waiting };
  });
}

export function registerDashboardRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  const asset = (file: string, contentType: string) => {
    const body = readFileSync(new URL(file, PAGE_DIR), 'utf8');
    return (c: Context<GatewayEnv>) => c.body(body, 200, { ...PAGE_HEADERS, 'content-type': contentType });
  };
  app.use('/dashboard', requireAdmin(services));
  app.use('/dashboard/*', requireAdmin(services));
  app.get('/dashboard', asset('index.html', 'text/html; charset=utf-8'));
  app.get('/dashboard/dashboard.js', asset('dashboard.js', 'text/javascript; charset=utf-8'));
  app.get('/dashboard/dashboard.css', asset('dashboard.css', 'text/css; charset=utf-8'));
  app.get('/dashboard/data', async (c) => {
    await services.store.fullyListed();
    const snapshot = await liveSnapshot({
      registry: services.metrics.registry,
      model: services.models.baseName,
      stats: services.engine.stats,
      tenants: tenantActivity(services),
      storedAdapters: services.store.list().map((record) => record.id),
    });
    return c.json(snapshot, 200, PAGE_HEADERS);
  });
}
