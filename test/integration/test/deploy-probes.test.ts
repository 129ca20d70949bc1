/**
 * The probes the kustomize overlays render reach a port the workload really opens, in every
 * mode. Without a cluster: each agent DaemonSet (every mode, every overlay) and the tracker are
 * started with the command and environment they render, and their rendered probes are called.
 * Only what cannot exist here is changed: node paths become temporary directories, listeners
 * bind loopback instead of every address, NATS is one local server with one replica per stream
 * (or, for the agents, an address where nothing answers, which an agent must survive), and
 * telemetry export is off.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  makeTempDir,
  startNats,
  startProcess,
  waitFor,
  type NatsServer,
  type RunningProcess,
} from '@shoal/testkit';

import {
  podSpec,
  renderOverlay,
  type PodSpec,
  REPO_ROOT,
  workloads,
  type Container,
  type K8sObject,
} from '../src/deploy.js';

const OVERLAYS = ['mixed', 'leecher', 'seeder'] as const;

interface HttpProbe {
  readonly path: string;
  readonly port: number | string;
}

type ProbeKind = 'startupProbe' | 'livenessProbe' | 'readinessProbe';
const PROBE_KINDS: readonly ProbeKind[] = ['startupProbe', 'livenessProbe', 'readinessProbe'];

function probesOf(container: Container): { kind: ProbeKind; probe: HttpProbe }[] {
  const raw = container as unknown as Record<string, { httpGet?: HttpProbe } | undefined>;
  return PROBE_KINDS.flatMap((kind) => {
    const probe = raw[kind]?.httpGet;
    return probe === undefined ? [] : [{ kind, probe }];
  });
}

/** The container port a probe targets, by name or number. */
function probePort(container: Container, probe: HttpProbe): number {
  if (typeof probe.port === 'number') {
    return probe.port;
  }
  const port = container.ports?.find((p) => p.name === probe.port)?.containerPort;
  assert.ok(port !== undefined, `${container.name}: no container port named ${probe.port}`);
  return port;
}

/** The service a Shoal container runs (`services/<name>/dist/src/main.js`), if any. */
function serviceOf(container: Container): string | undefined {
  // Node flags may come first (the agent's memory settings): the script is the first argument
  // that is not one.
  const script = container.args?.find((arg) => !arg.startsWith('-')) ?? '';
  return /^services\/([a-z]+)\/dist\/src\/main\.js$/.exec(script)?.[1];
}

/** The ports the container's `*_LISTEN` settings open. */
function listenPorts(env: Record<string, string>): Set<number> {
  const ports = new Set<number>();
  for (const [name, value] of Object.entries(env)) {
    const match = /:(\d+)$/.exec(value);
    if (name.endsWith('_LISTEN') && match?.[1] !== undefined) {
      ports.add(Number(match[1]));
    }
  }
  return ports;
}

function decodeSecret(secret: K8sObject, key: string): string | undefined {
  const stringData = secret.stringData as Record<string, string> | undefined;
  const data = secret.data as Record<string, string> | undefined;
  if (stringData?.[key] !== undefined) {
    return stringData[key];
  }
  return data?.[key] === undefined ? undefined : Buffer.from(data[key], 'base64').toString();
}

/**
 * The container's environment as the kubelet would give it: ConfigMaps and Secrets looked up
 * in the rendered objects, field references for one node, `$(VAR)` expanded in order.
 */
function renderedEnv(container: Container, objects: readonly K8sObject[]): Record<string, string> {
  const env: Record<string, string> = {};
  const lookup = (kind: string, name: string): K8sObject => {
    const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
    assert.ok(found !== undefined, `${container.name}: no ${kind} ${name}`);
    return found;
  };
  for (const source of container.envFrom ?? []) {
    if (source.configMapRef !== undefined) {
      Object.assign(env, lookup('ConfigMap', source.configMapRef.name).data);
    }
  }
  const fields: Record<string, string> = {
    'status.hostIP': '127.0.0.1',
    'status.podIP': '127.0.0.1',
    'spec.nodeName': 'probe-node',
    'metadata.name': 'probe-pod',
    'metadata.namespace': 'shoal',
  };
  for (const variable of container.env ?? []) {
    const from = variable.valueFrom;
    let value: string | undefined;
    if (variable.value !== undefined) {
      value = variable.value.replace(/\$\(([A-Z0-9_]+)\)/g, (whole, name: string) =>
        env[name] === undefined ? whole : env[name],
      );
    } else if (from?.fieldRef !== undefined) {
      value = fields[from.fieldRef.fieldPath];
    } else if (from?.configMapKeyRef !== undefined) {
      const data = lookup('ConfigMap', from.configMapKeyRef.name).data as Record<string, string>;
      value = data[from.configMapKeyRef.key];
    } else if (from?.secretKeyRef !== undefined) {
      const secret = objects.find(
        (o) => o.kind === 'Secret' && o.metadata.name === from.secretKeyRef?.name,
      );
      value = secret === undefined ? undefined : decodeSecret(secret, from.secretKeyRef.key);
    }
    if (value !== undefined) {
      env[variable.name] = value;
    }
  }
  return env;
}

/**
 * Writes the files of the container's Secret volumes under `scratch`, where `localEnv` points
 * the paths, as the kubelet would mount them. Placeholders are replaced as an operator
 * replaces them before deploying: hand-out keys by the test kit's key pair.
 */
async function writeSecretMounts(
  spec: PodSpec,
  container: Container,
  objects: readonly K8sObject[],
  scratch: string,
): Promise<void> {
  for (const mount of container.volumeMounts ?? []) {
    const secretName = spec.volumes?.find((v) => v.name === mount.name)?.secret?.secretName;
    const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === secretName);
    if (secret === undefined) {
      continue;
    }
    const dir = join(scratch, mount.mountPath);
    await mkdir(dir, { recursive: true });
    const keys = Object.keys({ ...(secret.stringData as object), ...(secret.data as object) });
    for (const key of keys) {
      // The generated secrets themselves (scripts/gen-secrets.sh), hand-out keys included.
      await writeFile(join(dir, key), decodeSecret(secret, key) ?? '');
    }
  }
}

/** The rendered environment with only what cannot exist on this machine replaced. */
function localEnv(
  env: Record<string, string>,
  scratch: string,
  natsUrl: string,
): Record<string, string> {
  const local: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('OTEL_EXPORTER_')) {
      continue;
    }
    local[name] = value
      .replace(/^0\.0\.0\.0:/, '127.0.0.1:')
      .replace(/^\/(etc|var|tmp|data)\//, (whole) => join(scratch, whole));
  }
  if (local.SHOAL_NATS_URL !== undefined) {
    local.SHOAL_NATS_URL = natsUrl;
    // One local server rather than the rendered three-node JetStream cluster.
    local.SHOAL_NATS_STREAM_REPLICAS = '1';
  }
  local.OTEL_SDK_DISABLED = 'true';
  return local;
}

async function probeOk(port: number, path: string): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${String(port)}${path}`, {
      signal: AbortSignal.timeout(2_000),
    });
    await response.arrayBuffer();
    return response.status >= 200 && response.status < 400;
  } catch {
    return false;
  }
}

describe('deploy/k8s probes', () => {
  const rendered = new Map<string, K8sObject[]>();
  let nats: NatsServer;
  /** A loopback address where no NATS answers: agents must start and serve all the same. */
  let deadNatsUrl: string;
  const cleanup: (() => Promise<void>)[] = [];

  before(async () => {
    for (const name of OVERLAYS) {
      rendered.set(name, await renderOverlay(name));
    }
    nats = await startNats();
    cleanup.push(() => nats.stop());
    deadNatsUrl = `nats://agent:unused@127.0.0.1:${String(await freePort())}`;
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step();
    }
  });

  for (const overlay of OVERLAYS) {
    it(`overlay ${overlay}: every Shoal probe targets a port its container listens on`, () => {
      const objects = rendered.get(overlay) ?? [];
      let checked = 0;
      for (const workload of workloads(objects)) {
        for (const container of podSpec(workload).containers) {
          if (serviceOf(container) === undefined) {
            continue;
          }
          const ports = listenPorts(renderedEnv(container, objects));
          for (const { kind, probe } of probesOf(container)) {
            const port = probePort(container, probe);
            assert.ok(
              ports.has(port),
              `${workload.kind}/${workload.metadata.name} ${kind} targets port ${String(port)}, ` +
                `but it listens on ${[...ports].join(', ')}`,
            );
            checked += 1;
          }
        }
      }
      assert.ok(checked > 0, `overlay ${overlay} has no Shoal probes`);
    });

    it(`overlay ${overlay}: each agent mode and the tracker answer their rendered probes`, async () => {
      const objects = rendered.get(overlay) ?? [];
      const started: string[] = [];
      for (const workload of workloads(objects)) {
        for (const container of podSpec(workload).containers) {
          const service = serviceOf(container);
          if (service !== 'agent' && service !== 'tracker') {
            continue;
          }
          const scratch = await makeTempDir(`probe-${workload.metadata.name}`);
          await writeSecretMounts(podSpec(workload), container, objects, scratch.path);
          const env = localEnv(
            renderedEnv(container, objects),
            scratch.path,
            service === 'agent' ? deadNatsUrl : nats.url,
          );
          const proc: RunningProcess = startProcess(process.execPath, container.args ?? [], {
            cwd: REPO_ROOT,
            logPath: join(scratch.path, 'log'),
            env: { PATH: process.env.PATH ?? '', ...env },
          });
          try {
            for (const { kind, probe } of probesOf(container)) {
              const port = probePort(container, probe);
              await waitFor(
                `${workload.metadata.name} ${kind} ${probe.path} on ${String(port)}`,
                () => probeOk(port, probe.path),
                { process: proc, timeoutMs: 30_000, intervalMs: 250 },
              );
            }
            started.push(workload.metadata.name);
          } catch (error) {
            const log = await readFile(proc.logPath, 'utf8').catch(() => '');
            throw new Error(`${(error as Error).message}\n${log.slice(-4000)}`);
          } finally {
            await proc.stop();
            await scratch.remove();
          }
        }
      }
      const expected = workloads(objects)
        .filter((w) =>
          podSpec(w).containers.some((c) => ['agent', 'tracker'].includes(serviceOf(c) ?? '')),
        )
        .map((w) => w.metadata.name);
      assert.deepEqual(started, expected);
      assert.ok(started.length > 0);
    });
  }
});
