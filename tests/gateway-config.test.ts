import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import {
  BUILT_IN_TENANT_LIMITS,
  ConfigError,
  loadGatewaySettings,
  type GatewaySettings,
} from '../src/gateway/config.ts';

const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

async function withConfigFile(name: string, text: string, run: (file: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'gateway-config-'));
  try {
    const file = join(dir, name);
    await writeFile(file, text);
    await run(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function loadFile(name: string, text: string): Promise<GatewaySettings> {
  let settings: GatewaySettings | undefined;
  await withConfigFile(name, text, async (file) => {
    settings = await loadGatewaySettings({ GATEWAY_CONFIG: file });
  });
  return settings!;
}

async function rejectsFile(name: string, text: string, message: RegExp): Promise<void> {
  await withConfigFile(name, text, (file) =>
    assert.rejects(loadGatewaySettings({ GATEWAY_CONFIG: file }), (error: Error) => {
      assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
      assert.match(error.message, message);
      return true;
    }),
  );
}

/** Everything reachable from the settings, Buffers and nested objects included, as text. */
function dump(settings: GatewaySettings): string {
  return JSON.stringify(settings) + inspect(settings, { depth: Infinity, maxArrayLength: Infinity });
}

test('an empty environment gives the documented defaults and the development keys', async () => {
  const settings = await loadGatewaySettings({});
  assert.equal(settings.port, 8000);
  assert.equal(settings.host, '127.0.0.1');
  assert.equal(settings.modelPath, undefined);
  assert.equal(settings.modelName, undefined);
  assert.equal(settings.adaptersDir, 'adapters');
  assert.equal(settings.maxBodyBytes, 1024 * 1024);
  assert.equal(settings.maxAdapterBytes, 256 * 1024 * 1024);
  assert.deepEqual(settings.engine, {
    maxBatchSize: 16,
    adapterSlots: 8,
    maxLoraRank: 16,
    hostCacheBytes: 1024 ** 3,
    maxQueue: 256,
    prefillTokenBudget: 16,
    threads: availableParallelism(),
    threadSpinning: true,
    mixedPasses: true,
    executionProvider: 'cpu',
    compiledModelCacheDir: 'model-cache',
    adapterLayoutCache: { dir: join('model-cache', 'adapter-layouts'), maxBytes: 4 * 1024 ** 3 },
  });
  assert.equal(settings.otlpEndpoint, undefined);
  assert.equal(settings.logLevel, 'info');
  assert.equal(settings.configFile, undefined);
  assert.equal(settings.usingDevelopmentKeys, true);
  assert.equal(settings.tenants.length, 1);
  assert.equal(settings.tenants[0].name, 'local');
  // The development tenant may fill every batch row (MAX_BATCH_SIZE 16 by default), not only the built-in 8.
  assert.deepEqual(settings.tenants[0].limits, { ...BUILT_IN_TENANT_LIMITS, maxConcurrentRequests: 16 });
  assert.deepEqual(settings.tenants[0].keyDigests.map((d) => d.toString('hex')), [sha256Hex('sk-local-dev')]);
  assert.deepEqual(settings.adminKeyDigests.map((d) => d.toString('hex')), [sha256Hex('sk-admin-dev')]);
});

test('MODEL_CACHE_DIR=off or LAYOUT_CACHE_BYTES=0 keeps no adapter layouts on disk', async () => {
  const off = await loadGatewaySettings({ MODEL_CACHE_DIR: 'off' });
  assert.equal(off.engine.compiledModelCacheDir, undefined);
  assert.equal(off.engine.adapterLayoutCache, undefined);
  const none = await loadGatewaySettings({ LAYOUT_CACHE_BYTES: '0' });
  assert.equal(none.engine.compiledModelCacheDir, 'model-cache');
  assert.equal(none.engine.adapterLayoutCache, undefined);
});

test('every variable is read, byte sizes accept binary units, and empty values count as unset', async () => {
  const settings = await loadGatewaySettings({
    PORT: '9001',
    HOST: '0.0.0.0',
    MODEL_PATH: '/models/llama',
    MODEL_NAME: 'llama-small',
    ADAPTERS_DIR: '/data/adapters',
    MAX_BODY_BYTES: '2MiB',
    MAX_ADAPTER_BYTES: '1GiB',
    MAX_BATCH_SIZE: '32',
    ADAPTER_SLOTS: '4',
    MAX_LORA_RANK: '16',
    HOST_CACHE_BYTES: '512 MiB',
    MAX_QUEUE: '1000',
    PREFILL_TOKEN_BUDGET: '128',
    ENGINE_THREADS: '3',
    ENGINE_THREAD_SPINNING: 'off',
    ENGINE_MIXED_PASSES: 'off',
    EXECUTION_PROVIDER: 'cuda',
    QUANTIZE: 'q4',
    MODEL_CACHE_DIR: '/var/cache/gateway-models',
    LAYOUT_CACHE_BYTES: '2GiB',
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
    LOG_LEVEL: 'debug',
    GATEWAY_API_KEY: 'sk-tenant-secret-1',
    GATEWAY_ADMIN_KEY: 'sk-admin-secret-1',
    GATEWAY_CONFIG: '',
  });
  assert.equal(settings.port, 9001);
  assert.equal(settings.host, '0.0.0.0');
  assert.equal(settings.modelPath, '/models/llama');
  assert.equal(settings.modelName, 'llama-small');
  assert.equal(settings.adaptersDir, '/data/adapters');
  assert.equal(settings.maxBodyBytes, 2 * 1024 * 1024);
  assert.equal(settings.maxAdapterBytes, 1024 ** 3);
  assert.deepEqual(settings.engine, {
    maxBatchSize: 32,
    adapterSlots: 4,
    maxLoraRank: 16,
    hostCacheBytes: 512 * 1024 * 1024,
    maxQueue: 1000,
    prefillTokenBudget: 128,
    threads: 3,
    threadSpinning: false,
    mixedPasses: false,
    executionProvider: 'cuda',
    quantize: 'q4',
    compiledModelCacheDir: '/var/cache/gateway-models',
    adapterLayoutCache: { dir: '/var/cache/gateway-models/adapter-layouts', maxBytes: 2 * 1024 ** 3 },
  });
  assert.equal(settings.otlpEndpoint, 'http://collector:4318');
  assert.equal(settings.logLevel, 'debug');
  assert.equal(settings.configFile, undefined);
  assert.equal(settings.usingDevelopmentKeys, false);
  assert.equal(settings.tenants[0].limits.maxConcurrentRequests, 32);
  assert.deepEqual(settings.tenants[0].keyDigests.map((d) => d.toString('hex')), [sha256Hex('sk-tenant-secret-1')]);
  assert.deepEqual(settings.adminKeyDigests.map((d) => d.toString('hex')), [sha256Hex('sk-admin-secret-1')]);
  assert.doesNotMatch(dump(settings), /secret/);
});

test('only one of the two keys from the environment still counts as using development keys', async () => {
  const settings = await loadGatewaySettings({ GATEWAY_API_KEY: 'sk-tenant-secret-1' });
  assert.equal(settings.usingDevelopmentKeys, true);
});

test('invalid environment values are refused with the variable and the accepted values named', async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: '80a' }, /^PORT must be an integer from 0 to 65535, got "80a"$/],
    [{ PORT: '65536' }, /^PORT must be an integer from 0 to 65535, got "65536"$/],
    [{ PORT: '-1' }, /^PORT must be an integer from 0 to 65535/],
    [{ MAX_BATCH_SIZE: '0' }, /^MAX_BATCH_SIZE must be an integer from 1 to 1024, got "0"$/],
    [{ MAX_BATCH_SIZE: '2.5' }, /^MAX_BATCH_SIZE must be an integer/],
    [{ ADAPTER_SLOTS: '1e3' }, /^ADAPTER_SLOTS must be an integer from 1 to 1024/],
    [{ MAX_LORA_RANK: '4096' }, /^MAX_LORA_RANK must be an integer from 1 to 1024/],
    [{ MAX_QUEUE: '0' }, /^MAX_QUEUE must be an integer from 1 to 1000000/],
    [{ ENGINE_THREADS: 'all' }, /^ENGINE_THREADS must be an integer from 1 to 1024/],
    [{ MAX_BODY_BYTES: '1MB' }, /^MAX_BODY_BYTES must be a byte count .*KiB, MiB, GiB.*got "1MB"$/],
    [{ MAX_BODY_BYTES: '100' }, /^MAX_BODY_BYTES must be a byte count from 1024 to/],
    [{ MAX_ADAPTER_BYTES: '65GiB' }, /^MAX_ADAPTER_BYTES must be a byte count/],
    [{ HOST_CACHE_BYTES: 'lots' }, /^HOST_CACHE_BYTES must be a byte count/],
    [{ EXECUTION_PROVIDER: 'gpu' }, /^EXECUTION_PROVIDER must be one of cpu, cuda, got "gpu"$/],
    [{ ENGINE_THREAD_SPINNING: 'no' }, /^ENGINE_THREAD_SPINNING must be one of on, off, got "no"$/],
    [{ ENGINE_MIXED_PASSES: 'yes' }, /^ENGINE_MIXED_PASSES must be one of on, off, got "yes"$/],
    [{ QUANTIZE: 'q5' }, /^QUANTIZE must be one of none, q8, q4, got "q5"$/],
    [{ LOG_LEVEL: 'verbose' }, /^LOG_LEVEL must be one of debug, info, warn, error, got "verbose"$/],
    [{ HOST: 'my host' }, /^HOST must be an IP address or host name/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, /^OTEL_EXPORTER_OTLP_ENDPOINT must be an http:\/\/ or https:\/\/ URL/],
    [{ GATEWAY_API_KEY: 'two words' }, /^GATEWAY_API_KEY must consist of visible ASCII characters without spaces$/],
    [{ GATEWAY_API_KEY: 'sk-same', GATEWAY_ADMIN_KEY: 'sk-same' }, /GATEWAY_API_KEY and GATEWAY_ADMIN_KEY must differ/],
    [{ GATEWAY_CONFIG: 'tenants.yaml', GATEWAY_ADMIN_KEY: 'sk-x' }, /^GATEWAY_ADMIN_KEY is set but GATEWAY_CONFIG is too/],
  ];
  for (const [env, message] of cases) {
    await assert.rejects(loadGatewaySettings(env), (error: Error) => {
      assert.ok(error instanceof ConfigError, `${JSON.stringify(env)}: expected ConfigError, got ${error}`);
      assert.match(error.message, message, JSON.stringify(env));
      return true;
    });
  }
});

test('a key refused from the environment is not echoed in the message', async () => {
  await assert.rejects(loadGatewaySettings({ GATEWAY_ADMIN_KEY: 'sk-leak\u00e9' }), (error: Error) => {
    assert.doesNotMatch(error.message, /sk-leak/);
    return true;
  });
});

const yamlConfig = `
# admins: one hashed key
admin_keys:
  - sha256: "${sha256Hex('sk-admin-prod')}"
defaults:
  limits:
    max_concurrent_requests: 4
    tokens_per_minute: 20000
    max_stored_bytes: 512MiB
tenants:
  acme:
    keys:
      - sha256: "${sha256Hex('sk-acme-1').toUpperCase()}"
      - key: sk-acme-plaintext
    limits:
      tokens_per_minute: 50000
      max_queued_requests: 10
      max_active_jobs: 2
      max_stored_bytes: 2048
  globex_2:
    keys:
      - key: "sk-globex-plaintext"
`;

test('a YAML tenants file gives hashed keys, drops plaintext, and merges limits over the defaults', async () => {
  const settings = await loadFile('tenants.yaml', yamlConfig);
  assert.match(settings.configFile!, /tenants\.yaml$/);
  assert.deepEqual(settings.adminKeyDigests.map((d) => d.toString('hex')), [sha256Hex('sk-admin-prod')]);
  assert.deepEqual(
    settings.tenants.map((t) => ({ name: t.name, keys: t.keyDigests.map((d) => d.toString('hex')), limits: t.limits })),
    [
      {
        name: 'acme',
        keys: [sha256Hex('sk-acme-1'), sha256Hex('sk-acme-plaintext')],
        limits: { maxConcurrentRequests: 4, tokensPerMinute: 50000, maxQueuedRequests: 10, maxActiveJobs: 2, maxStoredBytes: 2048 },
      },
      {
        name: 'globex_2',
        keys: [sha256Hex('sk-globex-plaintext')],
        limits: { maxConcurrentRequests: 4, tokensPerMinute: 20000, maxStoredBytes: 512 * 1024 * 1024 },
      },
    ],
  );
  assert.equal(settings.usingDevelopmentKeys, false);
  const text = dump(settings);
  assert.doesNotMatch(text, /sk-acme-plaintext/);
  assert.doesNotMatch(text, /sk-globex-plaintext/);
  // The dump is thorough enough to find digests, so the absence of plaintext above means something.
  assert.match(text, /acme/);
});

test('a JSON tenants file is read the same way, with built-in limits when none are given', async () => {
  const json = JSON.stringify({ tenants: { solo: { keys: [{ sha256: sha256Hex('sk-solo') }] } } });
  const settings = await loadFile('tenants.json', json);
  assert.deepEqual(settings.adminKeyDigests, []);
  assert.equal(settings.tenants[0].name, 'solo');
  assert.deepEqual(settings.tenants[0].limits, BUILT_IN_TENANT_LIMITS);
  assert.equal(settings.tenants[0].keyDigests[0].toString('hex'), sha256Hex('sk-solo'));
});

test('a tenants file listing a development key is flagged', async () => {
  const settings = await loadFile('dev.yaml', 'tenants:\n  local:\n    keys:\n      - key: sk-local-dev\n');
  assert.equal(settings.usingDevelopmentKeys, true);
});

test('unknown keys are refused with their path', async () => {
  await rejectsFile('a.yaml', 'tenants: {}\nadmins: []\n', /a\.yaml: admins is not a known key; expected one of admin_keys, tenants, defaults$/);
  await rejectsFile(
    'b.yaml',
    'tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { burst: 5 }\n',
    /tenants\.acme\.limits\.burst is not a known key; expected one of max_concurrent_requests, tokens_per_minute, max_queued_requests, max_active_jobs, max_stored_bytes$/,
  );
  await rejectsFile(
    'c.json',
    JSON.stringify({ tenants: { acme: { keys: [{ key: 'k1' }, { key: 'k2', note: 'x' }] } } }),
    /tenants\.acme\.keys\[1\]\.note is not a known key; expected one of sha256, key$/,
  );
  await rejectsFile('d.yaml', 'tenants:\n  acme:\n    keys: [{ key: k1 }]\n    quota: 1\n', /tenants\.acme\.quota is not a known key/);
  await rejectsFile('e.yaml', 'defaults:\n  limit: {}\ntenants: {}\n', /defaults\.limit is not a known key; expected one of limits$/);
});

test('invalid tenants files are refused with the path at fault', async () => {
  const cases: [string, RegExp][] = [
    ['', /the top level must be a mapping/],
    ['- a\n- b\n', /the top level must be a mapping/],
    ['admin_keys: []\n', /tenants is required/],
    ['tenants: {}\n', /tenants must name at least one tenant/],
    ['tenants:\n  Acme:\n    keys: [{ key: k1 }]\n', /tenants\.Acme is refused: tenant name "Acme" is not allowed: use 1 to 64 lowercase letters/],
    ['tenants:\n  -acme:\n    keys: [{ key: k1 }]\n', /tenants\.-acme is refused: tenant name "-acme" is not allowed/],
    [`tenants:\n  ${'a'.repeat(65)}:\n    keys: [{ key: k1 }]\n`, /tenants\.a{65} is refused: tenant name/],
    ['tenants:\n  acme: {}\n', /tenants\.acme\.keys must be a non-empty list/],
    ['tenants:\n  acme:\n    keys: []\n', /tenants\.acme\.keys must be a non-empty list/],
    ['tenants:\n  acme:\n    keys: [{}]\n', /tenants\.acme\.keys\[0\] must have exactly one of sha256 or key/],
    ['tenants:\n  acme:\n    keys: [{ key: k1, sha256: "ab" }]\n', /tenants\.acme\.keys\[0\] must have exactly one of sha256 or key/],
    ['tenants:\n  acme:\n    keys: [{ sha256: abc }]\n', /tenants\.acme\.keys\[0\]\.sha256 must be a quoted string of 64 hex digits/],
    [`tenants:\n  acme:\n    keys: [{ sha256: ${'1'.repeat(64)} }]\n`, /keys\[0\]\.sha256 must be a quoted string of 64 hex digits/],
    ['tenants:\n  acme:\n    keys: [{ key: 12345 }]\n', /tenants\.acme\.keys\[0\]\.key must be a quoted string/],
    ['tenants:\n  acme:\n    keys: [{ key: "a b" }]\n', /tenants\.acme\.keys\[0\]\.key must be a quoted string of visible ASCII/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { tokens_per_minute: 0 }\n', /tenants\.acme\.limits\.tokens_per_minute must be an integer of at least 1, got 0/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { max_concurrent_requests: 1.5 }\n', /limits\.max_concurrent_requests must be an integer of at least 1, got 1\.5/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { max_queued_requests: "5" }\n', /limits\.max_queued_requests must be an integer of at least 0, got "5"/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { max_active_jobs: 0 }\n', /tenants\.acme\.limits\.max_active_jobs must be an integer of at least 1, got 0/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n    limits: { max_stored_bytes: 1GB }\n', /tenants\.acme\.limits\.max_stored_bytes must be a byte count from 1024 to \d+, optionally with a unit \(KiB, MiB, GiB\) as in "256MiB", got "1GB"/],
    ['defaults:\n  limits: { max_stored_bytes: 10 }\ntenants:\n  acme:\n    keys: [{ key: k1 }]\n', /defaults\.limits\.max_stored_bytes must be a byte count from 1024 to/],
    ['defaults:\n  limits: []\ntenants:\n  acme:\n    keys: [{ key: k1 }]\n', /defaults\.limits must be a mapping/],
    ['tenants:\n  acme:\n    keys: [{ key: k1 }]\n  beta:\n    keys: [{ key: k1 }]\n', /tenants\.beta\.keys\[0\] is the same key as tenants\.acme\.keys\[0\]/],
    [
      `admin_keys: [{ sha256: "${sha256Hex('k1')}" }]\ntenants:\n  acme:\n    keys: [{ key: k1 }]\n`,
      /tenants\.acme\.keys\[0\] is the same key as admin_keys\[0\]/,
    ],
    ['tenants:\n  acme: 1\n  acme: 2\n', /dup\.yaml:3:3: not valid YAML or JSON: Map keys must be unique/],
  ];
  for (const [text, message] of cases) await rejectsFile('dup.yaml', text, message);
});

test('a YAML syntax error names the line but does not quote it', async () => {
  await rejectsFile('bad.yaml', 'tenants:\n  acme:\n    keys: [{ key: sk-quoted-secret }\n', /bad\.yaml:\d+:\d+: not valid YAML or JSON/);
  await withConfigFile('bad.yaml', 'tenants:\n  acme:\n    keys: [{ key: sk-quoted-secret }\n', (file) =>
    assert.rejects(loadGatewaySettings({ GATEWAY_CONFIG: file }), (error: Error) => {
      assert.doesNotMatch(error.message, /sk-quoted-secret/);
      return true;
    }),
  );
});

test('a missing tenants file is refused naming GATEWAY_CONFIG and the path', async () => {
  await assert.rejects(loadGatewaySettings({ GATEWAY_CONFIG: '/nonexistent/tenants.yaml' }), /^ConfigError: GATEWAY_CONFIG: cannot read \/nonexistent\/tenants\.yaml: ENOENT/);
});

test('shutdown grace and WebSocket ping interval are settings with defaults and bounds', async () => {
  const defaults = await loadGatewaySettings({});
  assert.equal(defaults.shutdownGraceSeconds, 10);
  assert.equal(defaults.webSocketPingSeconds, 30);
  const set = await loadGatewaySettings({ SHUTDOWN_GRACE_SECONDS: '45', WS_PING_INTERVAL_SECONDS: '5' });
  assert.equal(set.shutdownGraceSeconds, 45);
  assert.equal(set.webSocketPingSeconds, 5);
  await assert.rejects(loadGatewaySettings({ WS_PING_INTERVAL_SECONDS: '0' }), /WS_PING_INTERVAL_SECONDS must be an integer from 1 to 3600/);
});

test('WebSocket per-socket limits are settings with defaults and bounds; the message size follows MAX_BODY_BYTES', async () => {
  const defaults = await loadGatewaySettings({});
  assert.deepEqual(defaults.webSocketLimits, { maxMessageBytes: 1024 * 1024, maxResponsesPerSocket: 16, messagesPerMinute: 600 });
  assert.equal((await loadGatewaySettings({ MAX_BODY_BYTES: '4MiB' })).webSocketLimits.maxMessageBytes, 4 * 1024 * 1024);
  const set = await loadGatewaySettings({ WS_MAX_MESSAGE_BYTES: '64KiB', WS_MAX_RESPONSES_PER_SOCKET: '4', WS_MESSAGES_PER_MINUTE: '120' });
  assert.deepEqual(set.webSocketLimits, { maxMessageBytes: 64 * 1024, maxResponsesPerSocket: 4, messagesPerMinute: 120 });
  await assert.rejects(loadGatewaySettings({ WS_MAX_MESSAGE_BYTES: '10' }), /WS_MAX_MESSAGE_BYTES must be a byte count from 1024 to 1073741824/);
  await assert.rejects(loadGatewaySettings({ WS_MAX_RESPONSES_PER_SOCKET: '0' }), /WS_MAX_RESPONSES_PER_SOCKET must be an integer from 1 to 1024/);
  await assert.rejects(loadGatewaySettings({ WS_MESSAGES_PER_MINUTE: 'lots' }), /WS_MESSAGES_PER_MINUTE must be an integer from 1 to 1000000/);
});
