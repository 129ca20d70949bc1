/**
 * The probes the kustomize overlays render reach a port the workload really opens, in every
 * mode. Without a cluster: every Shoal workload of every overlay (each agent DaemonSet, the
 * tracker, the seed server and the watcher) and the NATS StatefulSet (its three servers, each
 * on a loopback address of its own, from the rendered nats.conf) are started with the command
 * and environment they render and the files their Secret and ConfigMap volumes mount, and
 * their rendered probes are called; each must answer 200 on a port that very process listens
 * on. Only what cannot exist here is changed: node paths become temporary directories,
 * listeners bind loopback instead of every address, the Shoal services use one local
 * nats-server with one replica per stream (or, for the agents, an address where nothing
 * answers, which an agent must survive), the object gateway is the test kit's S3 server with
 * the gateway's rendered key and bucket, Service and pod names resolve to those stand-ins and
 * pods, and telemetry export is off.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  listeningPorts,
  makeTempDir,
  requireBinary,
  startNats,
  startProcess,
  startS3,
  waitFor,
  type NatsServer,
  type RunningProcess,
} from '@shoal/testkit';

import {
  answers200,
  at,
  decodeSecret,
  localPaths,
  podSpec,
  renderedEnv,
  rewriteFiles,
  renderOverlay,
  type PodSpec,
  REPO_ROOT,
  selectedBy,
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

/**
 * Programs of this machine that run a container of another image as its entrypoint would:
 * these workloads are started from their rendered arguments, environment and mounted files
 * like Shoal's own (NATS: the rendered nats.conf, one server of the three).
 */
const LOCAL_PROGRAMS: readonly { readonly image: RegExp; readonly binary: string }[] = [
  { image: /^(docker\.io\/(library\/)?)?nats:/, binary: 'nats-server' },
];

/** A pod this test runs: its name and its own loopback address. */
interface Pod {
  readonly name: string;
  readonly ip: string;
}

/**
 * The pods this test runs of a workload: every replica of another image's StatefulSet (NATS
 * is ready only once its three servers have elected a JetStream leader), each on a loopback
 * address of its own, with the ports it renders; one pod on 127.0.0.1 of anything else.
 */
function podsOf(workload: K8sObject, container: Container): Pod[] {
  if (
    workload.kind !== 'StatefulSet' ||
    !LOCAL_PROGRAMS.some((p) => p.image.test(container.image))
  ) {
    return [{ name: 'probe-pod', ip: '127.0.0.1' }];
  }
  const replicas = Number(at(workload, 'spec', 'replicas') ?? 1);
  return Array.from({ length: replicas }, (_, i) => ({
    name: `${workload.metadata.name}-${String(i)}`,
    ip: `127.0.0.${String(2 + i)}`,
  }));
}

/**
 * The pods' own DNS names (`<pod>.<serviceName>`, short or qualified) resolved to their
 * addresses in a text.
 */
function resolvePods(text: string, workload: K8sObject, pods: readonly Pod[]): string {
  const serviceName = at(workload, 'spec', 'serviceName');
  if (typeof serviceName !== 'string') {
    return text;
  }
  return pods.reduce(
    (result, pod) =>
      result.replace(
        new RegExp(
          `\\b${pod.name}\\.${serviceName}(?:\\.[a-z0-9-]+\\.svc(?:\\.cluster\\.local)?)?(?=:)`,
          'g',
        ),
        pod.ip,
      ),
    text,
  );
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

/**
 * Writes the files of the container's Secret and ConfigMap volumes under `scratch`, where
 * `localEnv` points the paths, as the kubelet would mount them (only the listed `items` when a
 * volume names some). The Secrets are the generated ones (scripts/gen-secrets.sh), hand-out
 * keys included.
 */
async function writeMounts(
  spec: PodSpec,
  container: Container,
  objects: readonly K8sObject[],
  scratch: string,
): Promise<void> {
  for (const mount of container.volumeMounts ?? []) {
    const volume = spec.volumes?.find((v) => v.name === mount.name);
    const source =
      volume?.secret === undefined
        ? volume?.configMap === undefined
          ? undefined
          : { kind: 'ConfigMap', name: volume.configMap.name, items: volume.configMap.items }
        : { kind: 'Secret', name: volume.secret.secretName, items: volume.secret.items };
    const object = objects.find((o) => o.kind === source?.kind && o.metadata.name === source.name);
    if (source === undefined || object === undefined) {
      continue;
    }
    const keys = Object.keys({
      ...(object.stringData as object),
      ...(object.data as object),
    });
    const files = source.items ?? keys.map((key) => ({ key, path: key }));
    for (const { key, path } of files) {
      assert.ok(
        keys.includes(key),
        `${container.name}: ${source.kind} ${source.name} has no ${key}`,
      );
      const file = join(scratch, mount.mountPath, path);
      await mkdir(dirname(file), { recursive: true });
      const value =
        source.kind === 'Secret'
          ? decodeSecret(object, key)
          : (object.data as Record<string, string>)[key];
      await writeFile(file, value ?? '');
    }
  }
}

/**
 * A server of this machine standing in for a workload that is not Shoal's (the test cannot run
 * its image): the local port behind each of the workload's named container ports it serves.
 */
interface StandIn {
  readonly ports: Readonly<Record<string, number>>;
  stop(): Promise<void>;
}

/**
 * How a stand-in is started for a container of an image: NATS is the test's one nats-server;
 * versitygw (the object gateway) is the test kit's S3 server, accepting the key the gateway
 * renders and holding the buckets its init containers make (directories of its POSIX root).
 */
const STAND_INS: readonly {
  readonly image: RegExp;
  readonly start: (
    spec: PodSpec,
    container: Container,
    objects: readonly K8sObject[],
    nats: NatsServer,
  ) => Promise<StandIn>;
}[] = [
  {
    image: /^(docker\.io\/(library\/)?)?nats:/,
    start: (_spec, _container, _objects, nats) =>
      Promise.resolve({
        ports: { client: nats.port, monitor: Number(new URL(nats.monitorUrl).port) },
        // The test's own server, stopped by the test.
        stop: () => Promise.resolve(),
      }),
  },
  {
    image: /\/versitygw:/,
    start: async (spec, container, objects) => {
      const env = renderedEnv(container, objects);
      const accessKeyId = env.ROOT_ACCESS_KEY_ID;
      const secretAccessKey = env.ROOT_SECRET_ACCESS_KEY;
      assert.ok(accessKeyId !== undefined && secretAccessKey !== undefined, 'gateway key');
      const root = container.args?.at(-1) ?? '';
      const buckets = (spec.initContainers ?? []).flatMap((init) =>
        [...(init.command ?? []).join(' ').matchAll(/mkdir -p ((?:\/[\w.-]+)+)/g)]
          .map((match) => match[1] ?? '')
          .filter((dir) => dirname(dir) === root)
          .map((dir) => basename(dir)),
      );
      assert.ok(buckets.length > 0, `${container.name}: no bucket made under ${root}`);
      const s3 = await startS3({ credentials: [{ accessKeyId, secretAccessKey }], buckets });
      const name = container.ports?.[0]?.name;
      assert.ok(name !== undefined, `${container.name}: no named port`);
      return { ports: { [name]: s3.port }, stop: () => s3.stop() };
    },
  },
];

/**
 * Starts a stand-in for every workload a rendered Service selects whose image has one, and
 * returns the local address behind each `<service>:<port>` (the Service's short name, as the
 * workloads name it in their settings).
 */
async function startStandIns(
  objects: readonly K8sObject[],
  nats: NatsServer,
  cleanup: (() => Promise<void>)[],
): Promise<Map<string, string>> {
  const addresses = new Map<string, string>();
  const started = new Map<string, StandIn>();
  for (const service of objects.filter((o) => o.kind === 'Service')) {
    const [workload] = selectedBy(service, objects);
    if (workload === undefined) {
      continue;
    }
    const spec = podSpec(workload);
    for (const container of spec.containers) {
      const standIn = STAND_INS.find((s) => s.image.test(container.image));
      if (standIn === undefined) {
        continue;
      }
      const key = `${workload.metadata.name}/${container.name}`;
      let running = started.get(key);
      if (running === undefined) {
        const fresh = await standIn.start(spec, container, objects, nats);
        started.set(key, fresh);
        cleanup.push(() => fresh.stop());
        running = fresh;
      }
      const ports = (at(service, 'spec', 'ports') ?? []) as {
        port: number;
        targetPort?: number | string;
      }[];
      for (const { port, targetPort } of ports) {
        const name =
          typeof targetPort === 'string'
            ? targetPort
            : container.ports?.find((p) => p.containerPort === (targetPort ?? port))?.name;
        const local = name === undefined ? undefined : running.ports[name];
        if (local !== undefined) {
          addresses.set(`${service.metadata.name}:${String(port)}`, `127.0.0.1:${String(local)}`);
        }
      }
    }
  }
  return addresses;
}

/** The rendered environment with only what cannot exist on this machine replaced. */
function localEnv(
  env: Record<string, string>,
  scratch: string,
  natsUrl: string,
  services: ReadonlyMap<string, string>,
): Record<string, string> {
  const local: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('OTEL_EXPORTER_')) {
      continue;
    }
    local[name] = value
      .replace(/^0\.0\.0\.0:/, '127.0.0.1:')
      .replace(/^\/(etc|var|tmp|data)\//, (whole) => join(scratch, whole))
      // A Service's name, short or qualified (`name.namespace.svc[.cluster.local]`), resolves
      // to its stand-in.
      .replace(
        /(?<=^|\/\/|@)([a-z0-9-]+)(?:\.[a-z0-9-]+\.svc(?:\.cluster\.local)?)?:(\d+)/,
        (whole, host: string, port: string) => services.get(`${host}:${port}`) ?? whole,
      );
  }
  if (local.SHOAL_NATS_URL !== undefined) {
    local.SHOAL_NATS_URL = natsUrl;
    // One local server rather than the rendered three-node JetStream cluster.
    local.SHOAL_NATS_STREAM_REPLICAS = '1';
  }
  local.OTEL_SDK_DISABLED = 'true';
  return local;
}

/** The INFO a nats-server sends a client that connects, before anything else. */
async function serverInfo(
  host: string,
  port: number,
): Promise<{ cluster?: string; connect_urls?: string[] }> {
  const socket = connect({ host, port });
  socket.setTimeout(5_000, () => socket.destroy(new Error(`${host}:${String(port)}: no INFO`)));
  try {
    let text = '';
    for await (const chunk of socket) {
      text += (chunk as Buffer).toString('utf8');
      const end = text.indexOf('\r\n');
      if (end >= 0) {
        const line = text.slice(0, end);
        assert.ok(line.startsWith('INFO '), line);
        return JSON.parse(line.slice('INFO '.length)) as {
          cluster?: string;
          connect_urls?: string[];
        };
      }
    }
    throw new Error(`${host}:${String(port)} closed before its INFO`);
  } finally {
    socket.destroy();
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

    it(`overlay ${overlay}: every workload it can run here answers its rendered probes`, async () => {
      const objects = rendered.get(overlay) ?? [];
      const standIns: (() => Promise<void>)[] = [];
      const services = await startStandIns(objects, nats, standIns);
      cleanup.push(async () => {
        for (const stop of standIns) {
          await stop();
        }
      });
      const started: string[] = [];
      for (const workload of workloads(objects)) {
        for (const container of podSpec(workload).containers) {
          const service = serviceOf(container);
          const program = LOCAL_PROGRAMS.find((p) => p.image.test(container.image));
          if (service === undefined && program === undefined) {
            continue;
          }
          const pods = podsOf(workload, container);
          const running: { pod: Pod; proc: RunningProcess; remove: () => Promise<void> }[] = [];
          try {
            for (const pod of pods) {
              const scratch = await makeTempDir(`probe-${pod.name}`);
              await writeMounts(podSpec(workload), container, objects, scratch.path);
              const env = localEnv(
                renderedEnv(container, objects, pod),
                scratch.path,
                service === 'agent' ? deadNatsUrl : nats.url,
                services,
              );
              let command = process.execPath;
              let args = container.args ?? [];
              if (program !== undefined) {
                // Another image's own configuration names its mount paths and its pods: they
                // point here now.
                const mountPaths = (container.volumeMounts ?? []).map((m) => m.mountPath);
                const paths = localPaths(mountPaths, scratch.path, pod.ip);
                const local = (text: string): string => resolvePods(paths(text), workload, pods);
                for (const path of mountPaths) {
                  await mkdir(join(scratch.path, path), { recursive: true });
                  await rewriteFiles(join(scratch.path, path), local);
                }
                command = requireBinary(program.binary);
                args = args.map(local);
              }
              const proc = startProcess(command, args, {
                cwd: REPO_ROOT,
                logPath: join(scratch.path, 'log'),
                env: { PATH: process.env.PATH ?? '', ...env },
              });
              running.push({ pod, proc, remove: () => scratch.remove() });
            }
            for (const { pod, proc } of running) {
              try {
                for (const { kind, probe } of probesOf(container)) {
                  const port = probePort(container, probe);
                  await waitFor(
                    `${pod.name} ${kind} ${probe.path} on ${pod.ip}:${String(port)}`,
                    () => answers200(`http://${pod.ip}:${String(port)}${probe.path}`),
                    { process: proc, timeoutMs: 30_000, intervalMs: 250 },
                  );
                }
                // The answers came from this process, not from something else on the port.
                assert.ok(proc.child.pid !== undefined);
                const open = await listeningPorts(proc.child.pid);
                for (const { kind, probe } of probesOf(container)) {
                  const port = probePort(container, probe);
                  assert.ok(
                    open.has(port),
                    `${pod.name} ${kind} targets port ${String(port)}, but the ` +
                      `process listens on ${[...open].join(', ')}`,
                  );
                }
              } catch (error) {
                const log = await readFile(proc.logPath, 'utf8').catch(() => '');
                throw new Error(`${(error as Error).message}\n${log.slice(-4000)}`);
              }
            }
            if (program?.binary === 'nats-server') {
              // Clients (leecher agents through a LoadBalancer among them) know the servers by
              // the Service they dial: a server must not hand out its peers' pod addresses,
              // which clients outside the cluster cannot reach and would try on reconnect.
              const client = container.ports?.find((p) => p.name === 'client')?.containerPort;
              assert.ok(client !== undefined, `${container.name}: no client port`);
              for (const { pod } of running) {
                const info = await serverInfo(pod.ip, client);
                assert.equal(info.cluster, 'shoal', `${pod.name} is not in the cluster`);
                assert.deepEqual(info.connect_urls ?? [], [], `${pod.name} advertises its peers`);
              }
            }
            started.push(workload.metadata.name);
          } finally {
            for (const { proc, remove } of running) {
              await proc.stop();
              await remove();
            }
          }
        }
      }
      const expected = workloads(objects)
        .filter((w) =>
          podSpec(w).containers.some(
            (c) => serviceOf(c) !== undefined || LOCAL_PROGRAMS.some((p) => p.image.test(c.image)),
          ),
        )
        .map((w) => w.metadata.name);
      assert.deepEqual(started, expected);
      assert.ok(started.length > 0);
    });
  }
});
