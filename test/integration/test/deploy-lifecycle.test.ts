/**
 * What the rendered manifests do over a deployment's life, where no cluster runs here:
 * rolling updates (the agent's DaemonSets update in place, since a pod on the node network
 * cannot surge next to the old one holding its ports), node drains (disruption budgets let a
 * drain go on and keep the NATS quorum), restarts of NATS (its JetStream store is on the
 * pod's volume claim), configuration changes (what `kubectl apply -k` rolls by itself and
 * what a file-watching service picks up in place), and no variable that nothing reads.
 * The runtime half (SIGTERM under load, containerd falling back, the next agent on the same
 * node) is agent-rollout.test.ts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import {
  at,
  podSpec,
  REPO_ROOT,
  renderCompose,
  renderAll,
  workloads,
  type Container,
  type K8sObject,
} from '../src/deploy.js';

const nameOf = (w: K8sObject): string => `${w.kind}/${w.metadata.name}`;

/** The Shoal containers of every workload, with the workload they belong to. */
function shoalContainers(objects: readonly K8sObject[]): { workload: K8sObject; c: Container }[] {
  return workloads(objects).flatMap((workload) => {
    const spec = podSpec(workload);
    return [...spec.containers, ...(spec.initContainers ?? [])]
      .filter((c) => c.image.includes('/shoal:'))
      .map((c) => ({ workload, c }));
  });
}

/** A compose duration (`45s`, `1m30s`, `500ms`) in ms. */
function composeDurationMs(text: string): number {
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001 };
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us)/g)];
  assert.ok(parts.length > 0, `not a duration: ${text}`);
  return parts.reduce((sum, [, n, unit]) => sum + Number(n) * (units[unit ?? ''] ?? NaN), 0);
}

/** The ConfigMaps and Secrets a workload's pods read, by the name they use. */
function configSources(workload: K8sObject): Set<string> {
  const spec = podSpec(workload);
  const found = new Set<string>();
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
    for (const from of c.envFrom ?? []) {
      for (const name of [from.configMapRef?.name, from.secretRef?.name]) {
        if (name !== undefined) found.add(name);
      }
    }
    for (const variable of c.env ?? []) {
      const ref = variable.valueFrom?.secretKeyRef ?? variable.valueFrom?.configMapKeyRef;
      if (ref !== undefined) found.add(ref.name);
    }
  }
  for (const volume of spec.volumes ?? []) {
    for (const name of [volume.configMap?.name, volume.secret?.secretName]) {
      if (name !== undefined) found.add(name);
    }
  }
  return found;
}

/** Labels of a workload's pods. */
function podLabels(workload: K8sObject): Record<string, string> {
  return (at(workload, 'spec', 'template', 'metadata', 'labels') ?? {}) as Record<string, string>;
}

describe('deploy/k8s over a deployment life', () => {
  let rendered = new Map<string, K8sObject[]>();

  before(async () => {
    rendered = await renderAll();
  });

  const each = (check: (objects: K8sObject[], name: string) => void) => () => {
    for (const [name, objects] of rendered) {
      check(objects, name);
    }
  };

  it('sets no variable in a Shoal container that nothing reads', () => {
    // Shoal reads SHOAL_* (checked against the schemas by deploy-settings.test.ts), the
    // OpenTelemetry SDK OTEL_* and Node NODE_OPTIONS (the tracker's heap cap, checked by
    // deploy-k8s.test.ts); anything else exists only to be referenced as $(NAME), in at
    // least one rendering (an overlay may replace the value that used it, as seeder's
    // SHOAL_SEED_URL does).
    const unread = new Map<string, string[]>();
    const read = new Set<string>();
    for (const [name, objects] of rendered) {
      for (const { workload, c } of shoalContainers(objects)) {
        const texts = JSON.stringify([c.env?.map((e) => e.value ?? ''), c.args, c.command]);
        for (const variable of c.env ?? []) {
          if (/^(SHOAL|OTEL)_/.test(variable.name) || variable.name === 'NODE_OPTIONS') {
            continue;
          }
          const key = `${nameOf(workload)} ${variable.name}`;
          if (texts.includes(`$(${variable.name})`)) {
            read.add(key);
          } else {
            unread.set(key, [...(unread.get(key) ?? []), name]);
          }
        }
      }
    }
    const never = [...unread].filter(([key]) => !read.has(key));
    assert.deepEqual(never, [], 'set in a Shoal container (in these renderings), read by nothing');
  });

  it(
    "updates the agents in place: a pod on the node's network cannot surge next to the old one",
    each((objects, name) => {
      for (const workload of objects.filter((o) => o.kind === 'DaemonSet')) {
        const spec = podSpec(workload);
        const where = `${name} ${nameOf(workload)}`;
        assert.equal(spec.hostNetwork, true, where);
        assert.equal(at(workload, 'spec', 'updateStrategy', 'type'), 'RollingUpdate', where);
        // A surge pod would wait for ports the old pod keeps, and the old one is removed only
        // once the new one is ready: the rollout would stop on the first node.
        const surge = at(workload, 'spec', 'updateStrategy', 'rollingUpdate', 'maxSurge') ?? 0;
        assert.ok(surge === 0 || surge === '0%', `${where}: maxSurge ${JSON.stringify(surge)}`);
        const unavailable = at(
          workload,
          ...['spec', 'updateStrategy', 'rollingUpdate', 'maxUnavailable'],
        );
        assert.ok(unavailable !== undefined && unavailable !== 0, `${where}: maxUnavailable`);
        // Declared host ports keep the scheduler from placing the new pod while the old one
        // still holds them (draining): without them it would start, fail to bind and crash.
        const [agent] = spec.containers;
        assert.ok(agent !== undefined);
        const listens = (agent.env ?? [])
          .filter((e) => /^SHOAL_AGENT_(PEER_)?LISTEN$/.test(e.name))
          .map((e) => Number(/:(\d+)$/.exec(e.value ?? '')?.[1]));
        assert.equal(listens.length, 2, where);
        for (const port of listens) {
          const declared: { hostPort?: number } | undefined = agent.ports?.find(
            (p) => p.containerPort === port,
          );
          assert.equal(declared?.hostPort, port, `${where}: port ${String(port)} as a hostPort`);
        }
      }
    }),
  );

  it(
    'lets a node drain go on, one pod of each at a time, and keeps the NATS quorum',
    each((objects, name) => {
      for (const pdb of objects.filter((o) => o.kind === 'PodDisruptionBudget')) {
        const selector = (at(pdb, 'spec', 'selector', 'matchLabels') ?? {}) as Record<
          string,
          string
        >;
        const selected = workloads(objects).filter((w) =>
          Object.entries(selector).every(([k, v]) => podLabels(w)[k] === v),
        );
        const where = `${name} ${nameOf(pdb)}`;
        assert.equal(selected.length, 1, `${where} selects ${selected.map(nameOf).join(', ')}`);
        const [workload] = selected;
        assert.ok(workload !== undefined);
        const replicas = Number(at(workload, 'spec', 'replicas') ?? 1);
        const maxUnavailable = at(pdb, 'spec', 'maxUnavailable');
        const minAvailable = at(pdb, 'spec', 'minAvailable');
        // Never a budget that blocks every eviction (a drain would hang on it).
        const evictable =
          typeof maxUnavailable === 'number'
            ? maxUnavailable
            : replicas - (typeof minAvailable === 'number' ? minAvailable : replicas);
        assert.ok(evictable >= 1, `${where}: a drain can never evict a pod of ${replicas}`);
        if (workload.metadata.name === 'shoal-nats') {
          // JetStream's R3 streams need a majority of the servers.
          assert.ok(
            replicas - evictable >= Math.floor(replicas / 2) + 1,
            `${where}: ${String(evictable)} of ${String(replicas)} may go, below a quorum`,
          );
        }
      }
    }),
  );

  it(
    "keeps NATS's JetStream store on each server's volume claim, through restarts and rescheduling",
    each((objects, name) => {
      const nats = objects.find(
        (o) => o.kind === 'StatefulSet' && o.metadata.name === 'shoal-nats',
      );
      if (nats === undefined) {
        return;
      }
      const config = objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
      );
      const conf = (at(config, 'data', 'nats.conf') as string | undefined) ?? '';
      const storeDir = /^\s*store_dir:\s*(\S+)$/m.exec(conf)?.[1];
      assert.ok(storeDir !== undefined, `${name}: no store_dir`);
      const claims = ((at(nats, 'spec', 'volumeClaimTemplates') ?? []) as K8sObject[]).map(
        (c) => c.metadata.name,
      );
      const [server] = podSpec(nats).containers;
      const mount = server?.volumeMounts?.find(
        (m) => storeDir === m.mountPath || storeDir.startsWith(`${m.mountPath}/`),
      );
      assert.ok(mount !== undefined, `${name}: ${storeDir} is on no volume`);
      assert.ok(claims.includes(mount.name), `${name}: ${storeDir} is not on a volume claim`);
    }),
  );

  it(
    'rolls the workloads when shoal-config changes, and mounts hot-reloaded files where updates reach them',
    each((objects, name) => {
      // shoal-config comes from a configMapGenerator: its name carries a hash of its data, so
      // a changed value renames it and `kubectl apply -k` rolls every workload that uses it.
      const configs = objects.filter(
        (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-config'),
      );
      assert.equal(configs.length, 1, name);
      const [config] = configs;
      assert.match(config?.metadata.name ?? '', /^shoal-config-[a-z0-9]{10}$/, name);
      for (const { workload, c } of shoalContainers(objects)) {
        const refs = (c.envFrom ?? []).map((e) => e.configMapRef?.name);
        assert.ok(
          refs.includes(config?.metadata.name),
          `${name} ${nameOf(workload)}: not on ${String(config?.metadata.name)}`,
        );
      }
      // Files the services reread in place (the agents' limits, certificates): the kubelet
      // updates a ConfigMap or Secret volume, never a file mounted with subPath.
      for (const workload of workloads(objects)) {
        const spec = podSpec(workload);
        for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
          for (const mount of c.volumeMounts ?? []) {
            const volume = spec.volumes?.find((v) => v.name === mount.name);
            if (volume?.configMap === undefined && volume?.secret === undefined) {
              continue;
            }
            assert.equal(
              (mount as { subPath?: string }).subPath,
              undefined,
              `${name} ${nameOf(workload)}: ${mount.mountPath} never sees an update`,
            );
          }
        }
      }
      const limits = objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name === 'shoal-agent-limits',
      );
      if (objects.some((o) => o.kind === 'DaemonSet')) {
        // Edited in place (kubectl edit), so its name stays without a hash.
        assert.ok(limits !== undefined, `${name}: shoal-agent-limits renamed`);
      }
    }),
  );

  it('compose: gives every Shoal service more time to stop than its graceful shutdown', async () => {
    const compose = await renderCompose();
    try {
      let checked = 0;
      for (const [name, service] of Object.entries(compose.services)) {
        if (
          !(service.image ?? '').startsWith('shoal:') ||
          name === 'handout-keys' ||
          name === 'record-keys'
        ) {
          continue;
        }
        const shutdownMs = Number(service.environment?.SHOAL_SHUTDOWN_TIMEOUT_MS ?? 30_000);
        // docker stops a container with SIGKILL 10 s after SIGTERM unless told otherwise.
        const grace = at(service, 'stop_grace_period');
        const graceMs = typeof grace === 'string' ? composeDurationMs(grace) : 10_000;
        assert.ok(
          graceMs > shutdownMs,
          `compose ${name}: killed after ${String(graceMs)} ms, before its ${String(shutdownMs)} ms shutdown`,
        );
        checked += 1;
      }
      assert.ok(checked >= 5, `only ${String(checked)} Shoal services`);
    } finally {
      await compose.remove();
    }
  });

  it("matches deploy/k8s/README.md's table of what a change to each ConfigMap and Secret takes", async () => {
    const readme = await readFile(join(REPO_ROOT, 'deploy', 'k8s', 'README.md'), 'utf8');
    const section = /^## Changing the configuration\n([\s\S]*?)^## /m.exec(readme)?.[1] ?? '';
    const rows = new Map(
      [...section.matchAll(/^\| `([a-z0-9-]+)` *\|[^|]*\| *([^|]*?) *\|$/gm)].map((m) => [
        m[1] ?? '',
        m[2] ?? '',
      ]),
    );
    assert.ok(rows.size >= 5, `no table in "Changing the configuration": ${section.slice(0, 200)}`);
    const objects = rendered.get('mixed') ?? [];
    const used = new Set(workloads(objects).flatMap((w) => [...configSources(w)]));
    const listed = new Set<string>();
    for (const name of used) {
      const base = [...rows.keys()].find(
        (row) => name === row || new RegExp(`^${row}-[a-z0-9]{10}$`).test(name),
      );
      assert.ok(base !== undefined, `${name} is read by a workload but not in the table`);
      listed.add(base);
      const after = rows.get(base) ?? '';
      const hashed = name !== base;
      assert.equal(
        after.startsWith('rolls by itself'),
        hashed,
        `${base}: the table says "${after}", but its rendered name is ${name}`,
      );
      if (!hashed) {
        assert.match(after, /^(restart|nothing)/, `${base}: "${after}"`);
      }
    }
    assert.deepEqual(
      [...rows.keys()].filter((row) => !listed.has(row)),
      [],
      'listed in the table, read by no workload of the mixed overlay',
    );
  });
});
