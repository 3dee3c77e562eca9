import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { loadGatewaySettings } from '../src/gateway/config.ts';
import { loadTrainerSettings } from '../src/training/service/trainer-settings.ts';
import { startTestGateway, type TestGateway } from './support/gateway.ts';
import { REPO_ROOT } from './support/models.ts';

type Json = Record<string, any>;

const K8S_DIR = join(REPO_ROOT, 'k8s');
const manifests = readdirSync(K8S_DIR)
  .filter((file) => file.endsWith('.yaml'))
  .flatMap((file) => parseAllDocuments(readFileSync(join(K8S_DIR, file), 'utf8')).map((document) => ({ file, document })));

function resources(kind: string): Json[] {
  return manifests.map(({ document }) => document.toJS() as Json).filter((resource) => resource?.kind === kind);
}

function single(kind: string, name?: string): Json {
  const found = resources(kind).filter((resource) => name === undefined || resource.metadata.name === name);
  assert.equal(found.length, 1, `expected one ${kind}${name ? ` named ${name}` : ''}, found ${found.length}`);
  return found[0];
}

/** The environment variables config.ts reads, taken from its source so the list cannot drift from it. */
function variablesReadByConfig(): Set<string> {
  const source = readFileSync(join(REPO_ROOT, 'src/gateway/config.ts'), 'utf8');
  return new Set([...source.matchAll(/\benv[A-Z]\w*\(env, '([A-Z0-9_]+)'/g)].map((match) => match[1]));
}

const deployment = single('Deployment', 'peft-gateway');
const pod = deployment.spec.template.spec;
const container = pod.containers.find((c: Json) => c.name === 'gateway');
const configMap = single('ConfigMap', container.envFrom[0].configMapRef.name);
const env: Record<string, string> = {
  ...configMap.data,
  ...Object.fromEntries((container.env ?? []).map((entry: Json) => [entry.name, entry.value])),
};
const port = Number(env.PORT);

function matchesPodLabels(selector: Record<string, string>): boolean {
  const labels = deployment.spec.template.metadata.labels;
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

function mountedVolume(mountPath: string): Json {
  const mount = container.volumeMounts.find((m: Json) => m.mountPath === mountPath);
  assert.ok(mount, `nothing is mounted at ${mountPath}`);
  return pod.volumes.find((volume: Json) => volume.name === mount.name);
}

/** The trainer container's environment: the shared ConfigMap, then its own variables (the pod name as TRAINER_ID). */
function trainerEnvironment(trainer: Json): Record<string, string> {
  const own = (trainer.env ?? []).map((entry: Json) => [entry.name, entry.value ?? `<${entry.valueFrom.fieldRef.fieldPath}>`]);
  return { ...single('ConfigMap', trainer.envFrom[0].configMapRef.name).data, ...Object.fromEntries(own) };
}

describe('Kubernetes manifests', () => {
  it('runs the trainer sidecar as a second container sharing the adapter store and the training directory', () => {
    assert.equal(env.TRAINER, 'external', 'the gateway container must not start its own trainer child');
    const trainer = pod.containers.find((c: Json) => c.name === 'trainer');
    assert.ok(trainer, 'a trainer container');
    assert.deepEqual(trainer.command.slice(-1), ['src/trainer-main.ts']);
    const trainerEnv = trainerEnvironment(trainer);
    const settings = loadTrainerSettings(trainerEnv);
    const source = readFileSync(join(REPO_ROOT, 'src/training/service/trainer-settings.ts'), 'utf8');
    const known = new Set([...source.matchAll(/\benv[A-Z]\w*\(env, '([A-Z0-9_]+)'/g)].map((match) => match[1]));
    for (const entry of trainer.env) assert.ok(known.has(entry.name), `${entry.name} is not read by trainer-settings.ts`);
    const claimAt = (c: Json, path: string) => {
      const mount = c.volumeMounts.find((m: Json) => m.mountPath === path);
      assert.ok(mount, `${c.name} mounts nothing at ${path}`);
      return pod.volumes.find((volume: Json) => volume.name === mount.name).persistentVolumeClaim.claimName;
    };
    assert.equal(claimAt(trainer, settings.adaptersDir), claimAt(container, env.ADAPTERS_DIR));
    assert.equal(claimAt(trainer, settings.trainingDir), claimAt(container, env.TRAINING_DIR));
    assert.notEqual(claimAt(trainer, settings.trainingDir), claimAt(trainer, settings.adaptersDir), 'jobs never inside the adapter store');
    assert.deepEqual(single('PersistentVolumeClaim', claimAt(trainer, settings.trainingDir)).spec.accessModes, ['ReadWriteMany']);
    assert.equal(trainer.ports[0].containerPort, settings.port);
    assert.equal(trainer.livenessProbe.httpGet.path, '/health');
    assert.equal(settings.host, '0.0.0.0', 'metrics reachable by Prometheus');
  });


  it('every file is valid YAML made of named Kubernetes resources', () => {
    assert.ok(manifests.length >= 8, `${manifests.length} documents`);
    for (const { file, document } of manifests) {
      assert.deepEqual(document.errors, [], `${file} has YAML errors`);
      const resource = document.toJS() as Json;
      assert.match(resource.apiVersion, /^([a-z0-9.-]+\/)?v\d+(alpha\d+|beta\d+)?$/, `${file}: apiVersion`);
      assert.equal(typeof resource.kind, 'string', `${file}: kind`);
      assert.equal(typeof resource.metadata?.name, 'string', `${file}: metadata.name`);
    }
    assert.equal(single('InferencePool').apiVersion, 'inference.networking.k8s.io/v1');
  });

  it('sets only environment variables the gateway reads', () => {
    const known = variablesReadByConfig();
    assert.ok(known.has('PORT') && known.has('GATEWAY_CONFIG') && known.has('ADAPTERS_DIR'), [...known].join(', '));
    for (const name of Object.keys(env)) assert.ok(known.has(name), `${name} is not read by src/gateway/config.ts`);
  });

  it('exposes the port the gateway listens on, everywhere it is referenced', () => {
    const httpPort = container.ports.find((p: Json) => p.name === 'http');
    assert.equal(httpPort.containerPort, port);
    assert.equal(env.HOST, '0.0.0.0', 'the pod must listen beyond loopback');
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      assert.ok([port, 'http'].includes(container[probe].httpGet.port), `${probe} port`);
    }
    assert.equal(single('Service').spec.ports[0].targetPort, 'http');
    assert.deepEqual(single('InferencePool').spec.targetPorts, [{ number: port }]);
    assert.equal(Number(deployment.spec.template.metadata.annotations['prometheus.io/port']), port);
    assert.equal(single('ServiceMonitor').spec.endpoints[0].port, 'http');
    // The trainer's metrics port is scraped from the pods, since the Service does not expose it.
    const podMonitor = single('PodMonitor');
    assert.ok(matchesPodLabels(podMonitor.spec.selector.matchLabels));
    const metricsPort = podMonitor.spec.podMetricsEndpoints[0].port;
    assert.ok(pod.containers.some((c: Json) => c.ports?.some((p: Json) => p.name === metricsPort)), `no container port ${metricsPort}`);
  });

  it('selects the gateway pods from the Service, the InferencePool and the ServiceMonitor', () => {
    const labels = deployment.spec.template.metadata.labels;
    const matches = (selector: Record<string, string>) => Object.entries(selector).every(([key, value]) => labels[key] === value);
    assert.ok(matches(deployment.spec.selector.matchLabels));
    assert.ok(matches(single('Service').spec.selector));
    assert.ok(matches(single('InferencePool').spec.selector.matchLabels));
    assert.ok(matches(single('ServiceMonitor').spec.selector.matchLabels));
  });

  it('mounts the tenants Secret at GATEWAY_CONFIG and a ReadWriteMany claim at ADAPTERS_DIR', () => {
    const tenants = mountedVolume(dirname(env.GATEWAY_CONFIG));
    const secret = single('Secret', tenants.secret.secretName);
    assert.ok(basename(env.GATEWAY_CONFIG) in secret.stringData);

    const adapters = mountedVolume(env.ADAPTERS_DIR);
    const claim = single('PersistentVolumeClaim', adapters.persistentVolumeClaim.claimName);
    assert.deepEqual(claim.spec.accessModes, ['ReadWriteMany']);
    assert.ok(mountedVolume(dirname(env.MODEL_PATH)).persistentVolumeClaim.readOnly);
  });

  it('ships a tenants file that holds only key digests and that the gateway accepts with the ConfigMap', async () => {
    const secret = single('Secret', mountedVolume(dirname(env.GATEWAY_CONFIG)).secret.secretName);
    const text: string = secret.stringData[basename(env.GATEWAY_CONFIG)];
    assert.doesNotMatch(text, /^\s*-?\s*key:/m, 'plaintext keys do not belong in a deployed tenants file');
    const dir = await mkdtemp(join(tmpdir(), 'k8s-tenants-'));
    try {
      const file = join(dir, 'gateway.yaml');
      await writeFile(file, text);
      const settings = await loadGatewaySettings({ ...env, GATEWAY_CONFIG: file });
      assert.equal(settings.port, port);
      assert.ok(settings.tenants.length > 0 && settings.adminKeyDigests.length > 0);
      assert.equal(settings.engine.threads, Number(env.ENGINE_THREADS));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('Kubernetes probes against the real gateway', () => {
  let gateway: TestGateway;
  before(async () => {
    gateway = await startTestGateway();
  });
  after(() => gateway.stop());

  it('probes paths the gateway answers with 200', async () => {
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const response = await fetch(`${gateway.url}${container[probe].httpGet.path}`);
      assert.equal(response.status, 200, `${probe} ${container[probe].httpGet.path}`);
    }
  });

  it('gives a stopping pod more time than its pause and the gateway drain take', () => {
    const drainSeconds = Number(env.SHUTDOWN_GRACE_SECONDS);
    assert.ok(drainSeconds > 0, 'the ConfigMap sets SHUTDOWN_GRACE_SECONDS');
    const [command, seconds] = container.lifecycle.preStop.exec.command;
    assert.equal(command, 'sleep');
    assert.ok(pod.terminationGracePeriodSeconds > Number(seconds) + drainSeconds + 10, `${pod.terminationGracePeriodSeconds} s`);
  });
});
