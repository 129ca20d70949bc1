/**
 * Every setting the deploy files give a Shoal service is one that service reads, and the
 * service accepts them all: for each overlay, each overlay with the components an operator
 * adds, and the compose stack, every `SHOAL_*` variable of a service's container must be a
 * variable of that service's zod schema (a misspelt one would silently do nothing), every
 * `SHOAL_*` key of a ConfigMap or Secret read whole (`envFrom`) a variable of a service that
 * reads it, and the service's own configuration loader (the real one, from its built
 * `config.js`) must accept the environment the kubelet or compose would give it: values that
 * parse, and every setting the service requires in that role. Besides: no generated secret
 * is written into a ConfigMap or a plain value, every Shoal pod gets more time to stop than
 * its service's graceful shutdown takes, and what the services may hold fits what they are
 * given: every JetStream stream's and bucket's byte limit within NATS's `max_file_store`
 * (JetStream refuses a stream past it) and that within NATS's volume, the seed server's cache
 * within its volume, and the tracker's bounded tables within its memory limit.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';

import { KV_BUCKETS, STREAMS } from '@shoal/proto';

import {
  at,
  decodeSecret,
  find,
  podSpec,
  quantityBytes,
  renderCompose,
  renderedEnv,
  renderAll,
  renderingLabel,
  RENDERINGS,
  REPO_ROOT,
  workloads,
  type ComposeService,
  type Container,
  type K8sObject,
  type RenderedCompose,
} from '../src/deploy.js';

/** Each service's schema and loader, as `services/<name>/src/config.ts` exports them. */
const SERVICES = {
  agent: { fields: 'agentFields', load: 'loadAgentConfig' },
  tracker: { fields: 'trackerFields', load: 'loadTrackerConfig' },
  seedserver: { fields: 'seedFields', load: 'loadSeedConfig' },
  watcher: { fields: 'watcherFields', load: 'loadWatcherConfig' },
} as const;
type ServiceName = keyof typeof SERVICES;

interface ServiceConfig {
  /** The variables its schema declares. */
  readonly settings: ReadonlySet<string>;
  /** Its loader: the configuration, or a ConfigError naming every problem. */
  readonly load: (env: Record<string, string | undefined>) => Record<string, unknown>;
}

async function loadServiceConfig(name: ServiceName): Promise<ServiceConfig> {
  const path = join(REPO_ROOT, 'services', name, 'dist', 'src', 'config.js');
  const module = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  const fields = module[SERVICES[name].fields] as { shape?: Record<string, unknown> } | undefined;
  const load = module[SERVICES[name].load];
  assert.ok(fields?.shape !== undefined, `${path} exports no ${SERVICES[name].fields}`);
  assert.ok(typeof load === 'function', `${path} exports no ${SERVICES[name].load}`);
  return {
    settings: new Set(Object.keys(fields.shape)),
    load: load as ServiceConfig['load'],
  };
}

/** The service a container runs (`services/<name>/dist/src/main.js`), if it is one of Shoal's. */
function serviceOf(args: readonly string[] | undefined): ServiceName | undefined {
  const script = args?.find((arg) => !arg.startsWith('-')) ?? '';
  const name = /^services\/([a-z]+)\/dist\/src\/main\.js$/.exec(script)?.[1];
  return name !== undefined && name in SERVICES ? (name as ServiceName) : undefined;
}

/** A Shoal container of a rendered workload. */
interface ShoalContainer {
  readonly where: string;
  readonly service: ServiceName;
  readonly workload: K8sObject;
  readonly container: Container;
}

function shoalContainers(objects: readonly K8sObject[]): ShoalContainer[] {
  return workloads(objects).flatMap((workload) =>
    podSpec(workload).containers.flatMap((container) => {
      const service = serviceOf(container.args);
      return service === undefined
        ? []
        : [
            {
              where: `${workload.kind}/${workload.metadata.name} (${container.name})`,
              service,
              workload,
              container,
            },
          ];
    }),
  );
}

/** Whether a Shoal service would read the variable at all (`OTEL_*` is OpenTelemetry's). */
const isShoalSetting = (name: string): boolean => name.startsWith('SHOAL_');

/**
 * What is wrong with the settings rendered objects give their Shoal containers, one line each
 * (empty when nothing is).
 */
function settingProblems(
  objects: readonly K8sObject[],
  configs: ReadonlyMap<ServiceName, ServiceConfig>,
): string[] {
  const problems: string[] = [];
  const config = (service: ServiceName): ServiceConfig => {
    const found = configs.get(service);
    assert.ok(found !== undefined, service);
    return found;
  };
  // ConfigMaps and Secrets read whole, and which services read each.
  const readers = new Map<string, Set<ServiceName>>();
  for (const { service, container } of shoalContainers(objects)) {
    for (const source of container.envFrom ?? []) {
      const key =
        source.configMapRef === undefined
          ? `Secret/${source.secretRef?.name ?? ''}`
          : `ConfigMap/${source.configMapRef.name}`;
      readers.set(key, (readers.get(key) ?? new Set()).add(service));
    }
  }
  for (const [key, services] of readers) {
    const [kind, name] = key.split('/');
    const object = objects.find((o) => o.kind === kind && o.metadata.name === name);
    const keys = Object.keys({
      ...(at(object, 'data') as object | undefined),
      ...(at(object, 'stringData') as object | undefined),
    });
    for (const variable of keys.filter(isShoalSetting)) {
      if (![...services].some((s) => config(s).settings.has(variable))) {
        problems.push(
          `${key}: ${variable} is a setting of none of the services that read it (${[...services].join(', ')})`,
        );
      }
    }
  }
  for (const { where, service, container } of shoalContainers(objects)) {
    for (const { name } of container.env ?? []) {
      if (isShoalSetting(name) && !config(service).settings.has(name)) {
        problems.push(`${where}: ${name} is not a setting of the ${service}`);
      }
    }
    problems.push(...loadProblems(where, config(service), renderedEnv(container, objects)));
  }
  return problems;
}

/** The loader's complaints about an environment, each prefixed with where it comes from. */
function loadProblems(where: string, config: ServiceConfig, env: Record<string, string>): string[] {
  try {
    config.load(env);
    return [];
  } catch (error) {
    return [`${where}: ${(error as Error).message}`];
  }
}

/** What is wrong with the settings of the compose stack's Shoal services. */
function composeProblems(
  services: Readonly<Record<string, ComposeService>>,
  configs: ReadonlyMap<ServiceName, ServiceConfig>,
): string[] {
  const problems: string[] = [];
  for (const [name, compose] of Object.entries(services)) {
    const service = serviceOf(compose.command);
    const config = service === undefined ? undefined : configs.get(service);
    if (service === undefined || config === undefined) {
      continue;
    }
    const env = Object.fromEntries(
      Object.entries(compose.environment ?? {}).map(([k, v]) => [k, v ?? '']),
    );
    for (const variable of Object.keys(env).filter(isShoalSetting)) {
      if (!config.settings.has(variable)) {
        problems.push(`compose ${name}: ${variable} is not a setting of the ${service}`);
      }
    }
    problems.push(...loadProblems(`compose ${name}`, config, env));
  }
  return problems;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/**
 * Bytes of a nats-server configuration size, as nats-server reads it: `GB`, `MB`, `KB` (and
 * `GiB`...) are binary, a bare `G`, `M`, `K` decimal.
 */
function natsBytes(text: string): number {
  const match = /^(\d+)\s*([a-z]*)$/i.exec(text.trim());
  assert.ok(match !== null, `not a NATS size: ${text}`);
  const units: Record<string, number> = {
    '': 1,
    b: 1,
    k: 1e3,
    kb: KiB,
    kib: KiB,
    m: 1e6,
    mb: MiB,
    mib: MiB,
    g: 1e9,
    gb: GiB,
    gib: GiB,
    t: 1e12,
    tb: 1024 * GiB,
    tib: 1024 * GiB,
  };
  const unit = units[(match[2] ?? '').toLowerCase()];
  assert.ok(unit !== undefined, `unknown NATS size unit: ${text}`);
  return Number(match[1]) * unit;
}

/** `max_file_store` of a nats-server configuration. */
function maxFileStore(conf: string): number {
  const value = /^\s*max_file_store:\s*(\S+)\s*$/m.exec(conf)?.[1];
  assert.ok(value !== undefined, 'no max_file_store: JetStream would take up to the disk');
  return natsBytes(value);
}

/** The storage a StatefulSet's volume claim template asks for, in bytes. */
function claimBytes(statefulSet: K8sObject, claim: string): number {
  const templates = (at(statefulSet, 'spec', 'volumeClaimTemplates') ?? []) as K8sObject[];
  const template = templates.find((t) => t.metadata.name === claim);
  const storage = at(template, 'spec', 'resources', 'requests', 'storage');
  assert.ok(typeof storage === 'string', `${statefulSet.metadata.name}: no claim ${claim}`);
  return quantityBytes(storage);
}

/**
 * What a tracker replica's tables cost at most, from the measurements in the top-level
 * README ("JetStream limits": 1,000,000 view entries, 470 MiB) and the tracker's README
 * ("Blobs split between replicas": a kept have, 499 bytes): about 500 bytes an entry and 500 a
 * kept have, on top of the process itself (about 100 MiB: Node, the NATS client, the HTTP
 * server), counted here as 128 MiB.
 */
const TRACKER_BASE_BYTES = 128 * MiB;

/**
 * What a nats-server holds in memory per subject of a stream, measured with nats-server 2.9.10
 * (1,200,000 distinct subjects of 110 bytes in a file stream with one message per subject:
 * 423 MiB resident, and 152 MiB for 400,000), and what it takes without streams.
 */
const NATS_SUBJECT_BYTES = 360;
const NATS_BASE_BYTES = 128 * MiB;
const TRACKER_ENTRY_BYTES = 500;
const TRACKER_KEPT_HAVE_BYTES = 500;

const label = renderingLabel;

describe('settings of the deploy files', () => {
  const configs = new Map<ServiceName, ServiceConfig>();
  const rendered = new Map<string, K8sObject[]>();
  let compose: RenderedCompose;

  before(async () => {
    for (const name of Object.keys(SERVICES) as ServiceName[]) {
      configs.set(name, await loadServiceConfig(name));
    }
    for (const [name, objects] of await renderAll()) {
      rendered.set(name, objects);
    }
    compose = await renderCompose();
  });

  after(async () => {
    await compose.remove();
  });

  for (const rendering of RENDERINGS) {
    it(`${label(rendering)}: every SHOAL_* setting is real and its service accepts them`, () => {
      const objects = rendered.get(label(rendering)) ?? [];
      assert.ok(shoalContainers(objects).length > 0, 'no Shoal container rendered');
      assert.deepEqual(settingProblems(objects, configs), []);
    });
  }

  it('compose: every SHOAL_* setting is real and its service accepts them', () => {
    const shoal = Object.values(compose.services).filter((s) => serviceOf(s.command));
    assert.equal(shoal.length, 5, 'tracker, seed server, watcher and two agents');
    assert.deepEqual(composeProblems(compose.services, configs), []);
  });

  it('finds a misspelt setting, a bad value and a missing required one', () => {
    const objects = structuredClone(rendered.get('mixed') ?? []);
    const agent = objects.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'shoal-agent');
    assert.ok(agent !== undefined);
    const [container] = podSpec(agent).containers;
    assert.ok(container?.env !== undefined);
    container.env.push({ name: 'SHOAL_AGENT_CACHE_MAX_BYTE', value: '1' });
    const cacheMax = container.env.find((e) => e.name === 'SHOAL_AGENT_CACHE_MAX_BYTES');
    assert.ok(cacheMax !== undefined);
    cacheMax.value = '20Gi';
    const shared = objects.find(
      (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-config'),
    );
    const data = shared?.data as Record<string, string>;
    data.SHOAL_AGENT_REGISTRYS = data.SHOAL_AGENT_REGISTRIES ?? '';
    delete data.SHOAL_AGENT_REGISTRIES;
    const problems = settingProblems(objects, configs).join('\n');
    assert.match(problems, /DaemonSet\/shoal-agent \(agent\): SHOAL_AGENT_CACHE_MAX_BYTE is not/);
    assert.match(problems, /SHOAL_AGENT_CACHE_MAX_BYTES: must be a non-negative integer/);
    assert.match(problems, /SHOAL_AGENT_REGISTRYS is a setting of none of the services/);
    assert.match(problems, /SHOAL_AGENT_REGISTRIES: /);

    const services = structuredClone(compose.services);
    const tracker = services.tracker?.environment;
    assert.ok(tracker !== undefined);
    tracker.SHOAL_TRACKER_LISTN = '0.0.0.0:65020';
    assert.match(
      composeProblems(services, configs).join('\n'),
      /compose tracker: SHOAL_TRACKER_LISTN is not a setting of the tracker/,
    );
  });

  for (const rendering of RENDERINGS.filter((r) => r.components.length === 0)) {
    it(`${label(rendering)}: no generated secret in a ConfigMap or a plain value`, () => {
      const objects = rendered.get(label(rendering)) ?? [];
      const secrets = objects
        .filter((o) => o.kind === 'Secret')
        .flatMap((secret) =>
          Object.keys({ ...(secret.data as object), ...(secret.stringData as object) }).map(
            (key) => ({
              where: `${secret.metadata.name}/${key}`,
              value: decodeSecret(secret, key),
            }),
          ),
        )
        // Generated values (passwords, keys, tokens); not the shipped empty docker config.
        .filter((s): s is { where: string; value: string } => (s.value ?? '').length >= 32);
      assert.ok(secrets.length > 0, 'no generated secret rendered');
      for (const object of objects.filter((o) => o.kind !== 'Secret')) {
        const text = JSON.stringify(object);
        for (const { where, value } of secrets) {
          assert.ok(
            !text.includes(value),
            `${object.kind}/${object.metadata.name} holds ${where} in plain text`,
          );
        }
      }
    });
  }

  it("reserves no more JetStream storage than NATS's max_file_store, nor that more than its volume", async () => {
    // JetStream reserves each stream's and bucket's max_bytes against max_file_store when it
    // creates it; each NATS server of the three holds a replica of every stream.
    const declared =
      Object.values(STREAMS).reduce((sum, s) => sum + s.maxBytes, 0) +
      Object.values(KV_BUCKETS).reduce((sum, b) => sum + b.maxBytes, 0);
    assert.ok(declared > GiB, 'the declared limits were not found');
    for (const overlay of ['mixed', 'seeder']) {
      const objects = rendered.get(overlay) ?? [];
      const config = objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
      );
      const store = maxFileStore((at(config, 'data', 'nats.conf') as string | undefined) ?? '');
      assert.ok(
        declared <= store,
        `${overlay}: ${String(declared)} B reserved, ${String(store)} B store`,
      );
      const volume = claimBytes(find(objects, 'StatefulSet', 'shoal-nats'), 'data');
      assert.ok(
        store < volume,
        `${overlay}: a ${String(store)} B store on a ${String(volume)} B volume`,
      );
    }
    const compose = await readFile(
      join(REPO_ROOT, 'deploy', 'compose', 'nats', 'nats.conf'),
      'utf8',
    );
    assert.ok(
      declared <= maxFileStore(compose),
      'compose: the declared limits exceed max_file_store',
    );
  });

  it('gives NATS the memory the subjects of its streams may take', () => {
    // The swarm and want streams keep a subject per (blob, peer): up to their message bounds,
    // which a flood of haves or wants reaches; every server holds a replica of each.
    const subjects = [STREAMS.swarm, STREAMS.wants].reduce((sum, s) => sum + s.maxMsgs, 0);
    const need = NATS_BASE_BYTES + subjects * NATS_SUBJECT_BYTES;
    for (const overlay of ['mixed', 'seeder']) {
      const nats = find(rendered.get(overlay) ?? [], 'StatefulSet', 'shoal-nats');
      const server = podSpec(nats).containers.find((c) => c.name === 'nats');
      const limit = server?.resources?.limits?.memory;
      assert.ok(limit !== undefined, `${overlay}: NATS has no memory limit`);
      assert.ok(
        quantityBytes(limit) >= need,
        `${overlay}: NATS's ${limit} for up to ${String(subjects)} subjects (${String(Math.ceil(need / MiB))} MiB)`,
      );
    }
  });

  /** An overlay's seed server: its StatefulSet, container and loaded configuration. */
  function seedServer(overlay: string): {
    objects: K8sObject[];
    seed: K8sObject;
    container: Container;
    config: Record<string, unknown>;
  } {
    const objects = rendered.get(overlay) ?? [];
    const seed = find(objects, 'StatefulSet', 'shoal-seedserver');
    const [container] = podSpec(seed).containers;
    assert.ok(container !== undefined);
    const config = configs.get('seedserver')?.load(renderedEnv(container, objects)) ?? {};
    return { objects, seed, container, config };
  }

  it("keeps what the seed server stores in the object gateway within the gateway's volume", () => {
    for (const overlay of ['mixed', 'seeder']) {
      const { objects, config } = seedServer(overlay);
      assert.equal(config.SHOAL_S3_ENDPOINT, 'http://shoal-object-gateway:7070', overlay);
      const gateway = find(objects, 'StatefulSet', 'shoal-object-gateway');
      const volume = claimBytes(gateway, 'data');
      const maxBytes = Number(config.SHOAL_SEED_GATEWAY_MAX_BYTES);
      // 0 would be no limit: the volume fills and the gateway refuses every new blob.
      assert.ok(
        maxBytes > 0 && maxBytes < volume,
        `${overlay}: the retention keeps ${String(maxBytes)} B on a ${String(volume)} B volume`,
      );
    }
  });

  it("keeps the seed server's cache within its volume", () => {
    for (const overlay of ['mixed', 'seeder']) {
      const { seed, container, config } = seedServer(overlay);
      const cacheBytes = Number(config.SHOAL_SEED_CACHE_MAX_BYTES);
      const cacheDir = String(config.SHOAL_SEED_CACHE_DIR);
      const mount = container.volumeMounts?.find((m) => m.mountPath === cacheDir);
      assert.ok(mount !== undefined, `${overlay}: nothing mounted at ${cacheDir}`);
      const volume = claimBytes(seed, mount.name);
      assert.ok(
        cacheBytes > 0 && cacheBytes < volume,
        `${overlay}: ${String(cacheBytes)} B cache, ${String(volume)} B volume`,
      );
    }
  });

  it('gives the tracker the memory its bounded tables may take', () => {
    let checked = 0;
    for (const [name, objects] of rendered) {
      for (const { where, service, container } of shoalContainers(objects)) {
        if (service !== 'tracker') {
          continue;
        }
        const config = configs.get('tracker')?.load(renderedEnv(container, objects)) ?? {};
        const need =
          TRACKER_BASE_BYTES +
          Number(config.SHOAL_TRACKER_MAX_ENTRIES) * TRACKER_ENTRY_BYTES +
          (config.SHOAL_TRACKER_SHARD_BY_BLOB === true
            ? Number(config.SHOAL_TRACKER_MAX_KEPT_HAVES) * TRACKER_KEPT_HAVE_BYTES
            : 0);
        const limit = container.resources?.limits?.memory;
        assert.ok(limit !== undefined, `${name} ${where}: no memory limit`);
        assert.ok(
          quantityBytes(limit) >= need,
          `${name} ${where}: ${limit} for tables of up to ${String(Math.ceil(need / MiB))} MiB`,
        );
        checked += 1;
      }
    }
    assert.ok(checked > 0, 'no tracker rendered');
  });

  it('gives NATS more time to stop than its lame-duck mode takes', () => {
    // The pre-stop hook puts the server in lame-duck mode, which ignores the SIGTERM that
    // follows: it stops once its clients moved (grace period, then the eviction's duration).
    const seconds = (text: string | undefined): number => {
      const match = /^(\d+)s$/.exec(text ?? '');
      assert.ok(match !== null, `not a duration in seconds: ${String(text)}`);
      return Number(match[1]);
    };
    for (const overlay of ['mixed', 'seeder']) {
      const objects = rendered.get(overlay) ?? [];
      const nats = find(objects, 'StatefulSet', 'shoal-nats');
      const config = objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
      );
      const conf = (at(config, 'data', 'nats.conf') as string | undefined) ?? '';
      const lameDuck =
        seconds(/^lame_duck_duration:\s*(\S+)$/m.exec(conf)?.[1]) +
        seconds(/^lame_duck_grace_period:\s*(\S+)$/m.exec(conf)?.[1]);
      const grace = Number(at(nats, 'spec', 'template', 'spec', 'terminationGracePeriodSeconds'));
      assert.ok(
        grace > lameDuck,
        `${overlay}: killed after ${String(grace)} s, lame duck ${String(lameDuck)} s`,
      );
      assert.match(
        JSON.stringify(at(nats, 'spec', 'template', 'spec', 'containers', 0, 'lifecycle')),
        /--signal","ldm=/,
      );
    }
  });

  it('gives every Shoal pod more time to stop than its graceful shutdown may take', () => {
    let checked = 0;
    for (const [name, objects] of rendered) {
      for (const { where, service, workload, container } of shoalContainers(objects)) {
        const config = configs.get(service)?.load(renderedEnv(container, objects));
        const shutdownMs = Number(config?.SHOAL_SHUTDOWN_TIMEOUT_MS);
        const graceSeconds = Number(
          at(workload, 'spec', 'template', 'spec', 'terminationGracePeriodSeconds') ?? 30,
        );
        assert.ok(shutdownMs > 0, `${name} ${where}: no shutdown timeout`);
        assert.ok(
          graceSeconds * 1000 > shutdownMs,
          `${name} ${where}: killed after ${String(graceSeconds)} s, ` +
            `before its ${String(shutdownMs)} ms graceful shutdown ends`,
        );
        checked += 1;
      }
    }
    assert.ok(checked > 0);
  });
});
