import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadGatewaySettings, type GatewaySettings } from '../src/gateway/config.ts';
import { createAuthenticator, isApiKeySubprotocol, type Principal } from '../src/gateway/auth.ts';

const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

async function settingsFromFile(text: string): Promise<GatewaySettings> {
  const dir = await mkdtemp(join(tmpdir(), 'gateway-auth-'));
  try {
    const file = join(dir, 'tenants.yaml');
    await writeFile(file, text);
    return await loadGatewaySettings({ GATEWAY_CONFIG: file });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const tenantsFile = `
admin_keys:
  - sha256: "${sha256Hex('sk-admin-prod')}"
tenants:
  acme:
    keys:
      - sha256: "${sha256Hex('sk-acme-hashed')}"
      - key: sk-acme-plain
  globex:
    keys:
      - key: sk-globex
`;

function describe(principal: Principal | null): string {
  if (principal === null) return 'nobody';
  return principal.kind === 'admin' ? 'admin' : `tenant ${principal.tenant.name}`;
}

test('Bearer keys resolve to their tenant or to the admins, from sha256 and plaintext entries alike', async () => {
  const auth = createAuthenticator(await settingsFromFile(tenantsFile));
  assert.equal(describe(auth.authenticate('Bearer sk-acme-hashed')), 'tenant acme');
  assert.equal(describe(auth.authenticate('Bearer sk-acme-plain')), 'tenant acme');
  assert.equal(describe(auth.authenticate('Bearer sk-globex')), 'tenant globex');
  assert.equal(describe(auth.authenticate('Bearer sk-admin-prod')), 'admin');
  const acme = auth.authenticate('Bearer sk-acme-plain');
  assert.ok(acme?.kind === 'tenant');
  assert.deepEqual(acme.tenant.limits, { maxConcurrentRequests: 8, tokensPerMinute: 100_000 });
});

test('the scheme is case-insensitive and surrounding spaces are tolerated', async () => {
  const auth = createAuthenticator(await settingsFromFile(tenantsFile));
  assert.equal(describe(auth.authenticate('bearer sk-globex')), 'tenant globex');
  assert.equal(describe(auth.authenticate('BEARER   sk-globex ')), 'tenant globex');
});

test('wrong, missing and malformed credentials authenticate nobody', async () => {
  const auth = createAuthenticator(await settingsFromFile(tenantsFile));
  const refused = [
    undefined,
    '',
    'Bearer',
    'Bearer ',
    'sk-globex',
    'Basic sk-globex',
    'Token sk-globex',
    'Bearer sk-globe',
    'Bearer sk-globexx',
    'Bearer SK-GLOBEX',
    'Bearer sk-globex extra',
    `Bearer ${sha256Hex('sk-globex')}`,
  ];
  for (const header of refused) assert.equal(auth.authenticate(header), null, JSON.stringify(header));
});

test('without a tenants file the environment keys (or the development defaults) authenticate', async () => {
  const configured = createAuthenticator(
    await loadGatewaySettings({ GATEWAY_API_KEY: 'sk-env-tenant', GATEWAY_ADMIN_KEY: 'sk-env-admin' }),
  );
  assert.equal(describe(configured.authenticate('Bearer sk-env-tenant')), 'tenant local');
  assert.equal(describe(configured.authenticate('Bearer sk-env-admin')), 'admin');
  assert.equal(configured.authenticate('Bearer sk-local-dev'), null);

  const development = createAuthenticator(await loadGatewaySettings({}));
  assert.equal(describe(development.authenticate('Bearer sk-local-dev')), 'tenant local');
  assert.equal(describe(development.authenticate('Bearer sk-admin-dev')), 'admin');
});

test('a WebSocket handshake authenticates by Authorization header or by the key subprotocol', async () => {
  const auth = createAuthenticator(await settingsFromFile(tenantsFile));
  assert.equal(describe(auth.authenticateWebSocket({ authorization: 'Bearer sk-globex' })), 'tenant globex');
  assert.equal(
    describe(auth.authenticateWebSocket({ protocols: 'realtime, openai-insecure-api-key.sk-acme-plain' })),
    'tenant acme',
  );
  assert.equal(describe(auth.authenticateWebSocket({ protocols: 'openai-insecure-api-key.sk-admin-prod' })), 'admin');
  assert.equal(auth.authenticateWebSocket({ protocols: 'realtime, openai-insecure-api-key.wrong' }), null);
  assert.equal(auth.authenticateWebSocket({ protocols: 'openai-insecure-api-key.' }), null);
  assert.equal(auth.authenticateWebSocket({ protocols: 'realtime' }), null);
  assert.equal(auth.authenticateWebSocket({}), null);
  // A present header is the credential: a bad header is not rescued by a good subprotocol.
  assert.equal(
    auth.authenticateWebSocket({ authorization: 'Bearer wrong', protocols: 'openai-insecure-api-key.sk-globex' }),
    null,
  );
});

test('a page request authenticates by Bearer, or by Basic with the key as the password', async () => {
  const auth = createAuthenticator(await settingsFromFile(tenantsFile));
  const basic = (credentials: string) => `Basic ${Buffer.from(credentials).toString('base64')}`;
  assert.equal(describe(auth.authenticatePage('Bearer sk-admin-prod')), 'admin');
  assert.equal(describe(auth.authenticatePage(basic('admin:sk-admin-prod'))), 'admin');
  assert.equal(describe(auth.authenticatePage(basic(':sk-admin-prod'))), 'admin', 'any user name, even none');
  assert.equal(describe(auth.authenticatePage(basic('me:sk-globex'))), 'tenant globex');
  assert.equal(auth.authenticatePage(basic('sk-admin-prod')), null, 'a key in the user name is not a password');
  assert.equal(auth.authenticatePage(basic('admin:')), null);
  assert.equal(auth.authenticatePage(basic('admin:wrong')), null);
  assert.equal(auth.authenticatePage('Basic not base64!'), null);
  assert.equal(auth.authenticatePage(undefined), null);
  assert.equal(auth.authenticate(basic('admin:sk-admin-prod')), null, 'the API itself takes only Bearer');
});

test('only the key-carrying subprotocol is recognised as such', () => {
  assert.equal(isApiKeySubprotocol('openai-insecure-api-key.sk-1'), true);
  assert.equal(isApiKeySubprotocol(' openai-insecure-api-key.sk-1'), true);
  assert.equal(isApiKeySubprotocol('realtime'), false);
});

test('gateway.example.yaml loads, and the keys its comments name authenticate as documented', async () => {
  const exampleFile = fileURLToPath(new URL('../gateway.example.yaml', import.meta.url));
  const settings = await loadGatewaySettings({ GATEWAY_CONFIG: exampleFile });
  const auth = createAuthenticator(settings);
  assert.equal(describe(auth.authenticate('Bearer sk-admin-example')), 'admin');
  assert.equal(describe(auth.authenticate('Bearer sk-acme-example-1')), 'tenant acme');
  assert.equal(describe(auth.authenticate('Bearer sk-acme-example-2')), 'tenant acme');
  assert.equal(describe(auth.authenticate('Bearer sk-globex-example')), 'tenant globex');
  assert.deepEqual(
    settings.tenants.map((tenant) => [tenant.name, tenant.limits]),
    [
      ['acme', { maxConcurrentRequests: 4, tokensPerMinute: 200000, maxQueuedRequests: 32, maxActiveJobs: 8, maxStoredBytes: 4 * 1024 ** 3 }],
      ['globex', { maxConcurrentRequests: 4, tokensPerMinute: 60000 }],
    ],
  );
  assert.equal(settings.usingDevelopmentKeys, false);
});
