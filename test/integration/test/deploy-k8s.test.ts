/**
 * The kustomize overlays render, and the objects that matter are what the services and the
 * operators expect: the agent on the node's network with its ports and host mounts, a
 * three-node JetStream cluster, monitoring, disruption budgets, network policies, pinned
 * images and no reference to a Secret or ConfigMap that does not exist.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import { serviceNodeFlags } from '@shoal/testkit';

import {
  at,
  envValue,
  find,
  names,
  podSpec,
  quantityBytes,
  renderOverlay,
  renderWithComponents,
  selectedBy,
  workloads,
  type Container,
  type K8sObject,
} from '../src/deploy.js';

const OVERLAYS = ['mixed', 'leecher', 'seeder'] as const;
const AGENT_DAEMONSETS = ['shoal-agent', 'shoal-agent-seeder', 'shoal-agent-leecher'];

const rendered = new Map<string, K8sObject[]>();

function overlay(name: string): K8sObject[] {
  const objects = rendered.get(name);
  assert.ok(objects !== undefined, `overlay ${name} was not rendered`);
  return objects;
}

function containersOf(objects: readonly K8sObject[]): Container[] {
  return workloads(objects).flatMap((w) => {
    const spec = podSpec(w);
    return [...spec.containers, ...(spec.initContainers ?? [])];
  });
}

function shoalContainers(objects: readonly K8sObject[]): Container[] {
  return containersOf(objects).filter((c) => c.image.includes('/shoal:'));
}

function configData(objects: readonly K8sObject[], prefix: string): Record<string, string> {
  const configMap = objects.find(
    (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith(prefix),
  );
  assert.ok(configMap !== undefined, `no ConfigMap ${prefix}*`);
  return (configMap.data ?? {}) as Record<string, string>;
}

describe('deploy/k8s overlays', () => {
  before(async () => {
    for (const name of OVERLAYS) {
      rendered.set(name, await renderOverlay(name));
    }
  });

  for (const name of OVERLAYS) {
    describe(`overlay ${name}`, () => {
      it('puts everything in the shoal namespace', () => {
        const objects = overlay(name);
        find(objects, 'Namespace', 'shoal');
        for (const o of objects.filter((x) => x.kind !== 'Namespace')) {
          assert.equal(at(o, 'metadata', 'namespace'), 'shoal', `${o.kind}/${o.metadata.name}`);
        }
      });

      it('pins every image to a tag other than latest', () => {
        for (const container of containersOf(overlay(name))) {
          const image = container.image;
          const tag = /^(?:.*\/)?[^/:@]+(?::([^/@]+))?(?:@sha256:[a-f0-9]{64})?$/.exec(image);
          assert.ok(tag !== null, `${image} is not an image reference`);
          assert.ok(
            tag[1] !== undefined || image.includes('@sha256:'),
            `${container.name}: ${image} has no tag`,
          );
          assert.notEqual(tag[1], 'latest', `${container.name}: ${image}`);
        }
      });

      it('refers only to Secrets and ConfigMaps it defines', () => {
        const objects = overlay(name);
        const secrets = new Set(
          objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name),
        );
        const configMaps = new Set(
          objects.filter((o) => o.kind === 'ConfigMap').map((o) => o.metadata.name),
        );
        for (const w of workloads(objects)) {
          const spec = podSpec(w);
          const where = `${w.kind}/${w.metadata.name}`;
          for (const volume of spec.volumes ?? []) {
            if (volume.secret !== undefined) {
              assert.ok(secrets.has(volume.secret.secretName), `${where}: ${volume.name}`);
            }
            if (volume.configMap !== undefined) {
              assert.ok(configMaps.has(volume.configMap.name), `${where}: ${volume.name}`);
            }
          }
          for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
            for (const source of c.envFrom ?? []) {
              if (source.secretRef !== undefined) {
                assert.ok(secrets.has(source.secretRef.name), `${where}: ${source.secretRef.name}`);
              }
              if (source.configMapRef !== undefined) {
                assert.ok(configMaps.has(source.configMapRef.name), where);
              }
            }
            for (const variable of c.env ?? []) {
              const ref = variable.valueFrom?.secretKeyRef;
              if (ref !== undefined && ref.optional !== true) {
                const secret = objects.find(
                  (o) => o.kind === 'Secret' && o.metadata.name === ref.name,
                );
                assert.ok(secret !== undefined, `${where}: ${variable.name} -> ${ref.name}`);
                const keys = ['data', 'stringData'].flatMap((field) =>
                  Object.keys((at(secret, field) ?? {}) as Record<string, unknown>),
                );
                assert.ok(keys.includes(ref.key), `${where}: ${ref.name} has no ${ref.key}`);
              }
            }
          }
        }
      });

      it('points every Service at pods it selects and a port they declare', () => {
        const objects = overlay(name);
        // The leecher overlay has none: its agents use the seeder cluster's.
        const services = objects.filter((o) => o.kind === 'Service');
        for (const service of services) {
          const selected = selectedBy(service, objects);
          const where = `Service/${service.metadata.name}`;
          const selector = (at(service, 'spec', 'selector') ?? {}) as Record<string, string>;
          assert.ok(Object.keys(selector).length > 0, `${where} selects every pod`);
          assert.ok(selected.length > 0, `${where} selects no pod`);
          const ports = selected.flatMap((w) =>
            podSpec(w).containers.flatMap((c) => c.ports ?? []),
          );
          for (const { port, targetPort } of (at(service, 'spec', 'ports') ?? []) as {
            port: number;
            targetPort?: number | string;
          }[]) {
            const target = targetPort ?? port;
            assert.ok(
              ports.some((p) => (typeof target === 'string' ? p.name : p.containerPort) === target),
              `${where}: port ${String(port)} targets ${String(target)}, which no selected pod declares`,
            );
          }
        }
      });

      it('runs every container locked down, with memory requests and limits', () => {
        for (const workload of workloads(overlay(name))) {
          const spec = at(workload, 'spec', 'template', 'spec');
          const where = `${workload.kind}/${workload.metadata.name}`;
          assert.equal(at(spec, 'automountServiceAccountToken'), false, `${where}: API token`);
          assert.equal(at(spec, 'securityContext', 'seccompProfile', 'type'), 'RuntimeDefault');
          // The agents run as root (containerd's hosts files and their cache on the node's
          // disk belong to root), with no capability; everything else as a user.
          const agent = workload.kind === 'DaemonSet';
          assert.equal(
            at(spec, 'securityContext', 'runAsNonRoot'),
            agent ? undefined : true,
            where,
          );
          const pod = podSpec(workload);
          for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
            const context = at(c, 'securityContext');
            const container = `${where} ${c.name}`;
            assert.equal(at(context, 'allowPrivilegeEscalation'), false, container);
            assert.equal(at(context, 'readOnlyRootFilesystem'), true, container);
            assert.deepEqual(at(context, 'capabilities', 'drop'), ['ALL'], container);
            assert.equal(at(context, 'privileged'), undefined, container);
            assert.equal(at(context, 'capabilities', 'add'), undefined, container);
            assert.ok(c.resources?.requests?.memory !== undefined, `${container}: memory request`);
            assert.ok(c.resources.limits?.memory !== undefined, `${container}: memory limit`);
          }
        }
      });

      it('defines every $(VAR) before a variable uses it', () => {
        for (const container of containersOf(overlay(name))) {
          const defined = new Set<string>();
          for (const variable of container.env ?? []) {
            for (const match of (variable.value ?? '').matchAll(/\$\(([A-Z0-9_]+)\)/g)) {
              assert.ok(
                defined.has(match[1] ?? ''),
                `${container.name}: ${variable.name} uses $(${match[1]}) before it is defined`,
              );
            }
            defined.add(variable.name);
          }
        }
      });

      it('runs the services from the one image, each with its own NATS user', async () => {
        for (const container of shoalContainers(overlay(name))) {
          const args = container.args ?? [];
          const main = /^services\/(agent|tracker|seedserver|watcher)\/dist\/src\/main\.js$/.exec(
            args.at(-1) ?? '',
          );
          assert.ok(main !== null, `${container.name}: ${args.join(' ')}`);
          const service = main[1] as 'agent' | 'tracker' | 'seedserver' | 'watcher';
          // Node flags before the script: those its main.js names (the agent's memory settings).
          assert.deepEqual(args.slice(0, -1), await serviceNodeFlags(service), container.name);
          assert.match(
            envValue(container, 'SHOAL_NATS_URL') ?? '',
            new RegExp(`^nats://${service}:\\$\\(NATS_PASSWORD\\)@`),
          );
          const password = container.env?.find((e) => e.name === 'NATS_PASSWORD');
          assert.deepEqual(password?.valueFrom?.secretKeyRef, {
            name: 'shoal-nats-users',
            key: service,
          });
          assert.equal(envValue(container, 'OTEL_SERVICE_NAME'), `shoal-${service}`);
          assert.ok(
            container.envFrom?.some((s) => s.configMapRef?.name.startsWith('shoal-config')),
            `${container.name} does not read shoal-config`,
          );
        }
      });
    });
  }

  describe('mixed', () => {
    it('runs NATS as a three-node JetStream cluster with a user per role', () => {
      const objects = overlay('mixed');
      const nats = find(objects, 'StatefulSet', 'shoal-nats');
      assert.equal(at(nats, 'spec', 'replicas'), 3);
      assert.equal(at(nats, 'spec', 'serviceName'), 'shoal-nats-headless');
      assert.equal(
        at(find(objects, 'Service', 'shoal-nats-headless'), 'spec', 'clusterIP'),
        'None',
      );
      assert.ok(at(nats, 'spec', 'volumeClaimTemplates', 0, 'metadata', 'name'), 'data');
      const config = configData(objects, 'shoal-nats-config');
      const conf = config['nats.conf'] ?? '';
      assert.match(conf, /jetstream\s*\{[^}]*store_dir:\s*\/data/);
      for (const i of [0, 1, 2]) {
        assert.ok(conf.includes(`nats://shoal-nats-${i}.shoal-nats-headless:6222`), conf);
      }
      assert.match(conf, /include \.\/auth\.conf/);
      const auth = config['auth.conf'] ?? '';
      for (const user of ['agent', 'tracker', 'seedserver', 'watcher']) {
        assert.match(auth, new RegExp(`user: ${user}, password: \\$NATS_${user.toUpperCase()}_`));
      }
      assert.equal(configData(objects, 'shoal-config').SHOAL_NATS_STREAM_REPLICAS, '3');
    });

    it('spreads the replicas of every workload that has several over the nodes', () => {
      const objects = overlay('mixed');
      const spread = workloads(objects).filter((w) => Number(at(w, 'spec', 'replicas') ?? 1) > 1);
      assert.deepEqual(spread.map((w) => w.metadata.name).sort(), [
        'shoal-nats',
        'shoal-seedserver',
        'shoal-tracker',
        'shoal-watcher',
      ]);
      for (const workload of spread) {
        const constraints = (at(
          workload,
          'spec',
          'template',
          'spec',
          'topologySpreadConstraints',
        ) ?? []) as { topologyKey: string; whenUnsatisfiable: string; labelSelector: unknown }[];
        const byHost = constraints.find((c) => c.topologyKey === 'kubernetes.io/hostname');
        assert.ok(byHost !== undefined, `${workload.metadata.name} is not spread over nodes`);
        assert.deepEqual(byHost.labelSelector, at(workload, 'spec', 'selector'));
        // A JetStream quorum must not sit on one node: NATS waits for a node of its own.
        assert.equal(
          byHost.whenUnsatisfiable,
          workload.metadata.name === 'shoal-nats' ? 'DoNotSchedule' : 'ScheduleAnyway',
          workload.metadata.name,
        );
      }
    });

    it('gives the tracker the hand-out key, the seed its record key, and every piece server the public keys', () => {
      const objects = overlay('mixed');
      const cases: [string, string, string, string][] = [
        ['Deployment', 'shoal-tracker', 'SHOAL_TRACKER_HANDOUT_KEY_FILE', 'shoal-handout-key'],
        ['StatefulSet', 'shoal-seedserver', 'SHOAL_SEED_RECORD_KEY_FILE', 'shoal-seed-record-key'],
        ...AGENT_DAEMONSETS.map((name): [string, string, string, string] => [
          'DaemonSet',
          name,
          'SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE',
          'shoal-handout-public-keys',
        ]),
        [
          'StatefulSet',
          'shoal-seedserver',
          'SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE',
          'shoal-handout-public-keys',
        ],
        ...AGENT_DAEMONSETS.map((name): [string, string, string, string] => [
          'DaemonSet',
          name,
          'SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE',
          'shoal-handout-public-keys',
        ]),
      ];
      for (const [kind, name, variable, secret] of cases) {
        const spec = podSpec(find(objects, kind, name));
        const [container] = spec.containers;
        assert.ok(container !== undefined);
        const file = envValue(container, variable) ?? '';
        const volume = spec.volumes?.find((v) => v.secret?.secretName === secret);
        assert.ok(volume !== undefined, `${name} mounts no ${secret}`);
        const mount = container.volumeMounts?.find((m) => m.name === volume.name);
        assert.ok(
          mount !== undefined && file.startsWith(`${mount.mountPath}/`),
          `${name}: ${file}`,
        );
        assert.equal(mount.readOnly, true);
      }
      // Only the tracker holds the hand-out private key, only the seed server the record's.
      for (const workload of workloads(objects)) {
        const secrets = (podSpec(workload).volumes ?? []).map((v) => v.secret?.secretName);
        const name = workload.metadata.name;
        assert.equal(secrets.includes('shoal-handout-key'), name === 'shoal-tracker', name);
        assert.equal(secrets.includes('shoal-seed-record-key'), name === 'shoal-seedserver', name);
      }
    });

    it('runs the agent on the node network with its ports, host mounts and requests', () => {
      const objects = overlay('mixed');
      for (const name of AGENT_DAEMONSETS) {
        const spec = podSpec(find(objects, 'DaemonSet', name));
        assert.equal(spec.hostNetwork, true, name);
        const [agent] = spec.containers;
        assert.ok(agent !== undefined);
        const ports = new Map((agent.ports ?? []).map((p) => [p.containerPort, p.hostPort]));
        assert.equal(ports.get(65001), 65001, `${name}: mirror port`);
        assert.equal(ports.get(65002), 65002, `${name}: peer port`);
        assert.equal(envValue(agent, 'SHOAL_AGENT_LISTEN'), '127.0.0.1:65001');
        assert.equal(envValue(agent, 'SHOAL_AGENT_PEER_LISTEN'), '0.0.0.0:65002');
        assert.equal(envValue(agent, 'SHOAL_AGENT_PEER_URL'), 'http://$(HOST_IP):65002');
        const hostIp = agent.env?.find((e) => e.name === 'HOST_IP');
        assert.equal(hostIp?.valueFrom?.fieldRef?.fieldPath, 'status.hostIP');
        for (const [variable, hostPath] of [
          ['SHOAL_AGENT_HOSTS_DIR', '/etc/containerd/certs.d'],
          ['SHOAL_AGENT_CACHE_DIR', '/var/lib/shoal/agent'],
        ] as const) {
          const mountPath = envValue(agent, variable);
          const mount: { name: string; readOnly?: boolean } | undefined = agent.volumeMounts?.find(
            (m) => m.mountPath === mountPath,
          );
          assert.ok(mount !== undefined, `${name}: nothing mounted at ${variable}`);
          assert.notEqual(mount.readOnly, true, `${name}: ${variable} must be writable`);
          const volume: { hostPath?: { path: string } } | undefined = spec.volumes?.find(
            (v) => v.name === mount.name,
          );
          assert.equal(volume?.hostPath?.path, hostPath, `${name}: ${variable}`);
        }
      }
      const [mixed] = podSpec(find(objects, 'DaemonSet', 'shoal-agent')).containers;
      assert.ok(mixed !== undefined);
      assert.deepEqual(mixed.resources?.requests, { cpu: '200m', memory: '200Mi' });
      assert.equal(envValue(mixed, 'SHOAL_AGENT_MODE'), 'mixed');
    });

    it('chooses the agent mode by the node label shoal.io/agent-mode', () => {
      const objects = overlay('mixed');
      for (const mode of ['seeder', 'leecher']) {
        const spec = podSpec(find(objects, 'DaemonSet', `shoal-agent-${mode}`));
        assert.deepEqual(spec.nodeSelector, { 'shoal.io/agent-mode': mode });
        const [agent] = spec.containers;
        assert.equal(envValue(agent ?? { name: '', image: '' }, 'SHOAL_AGENT_MODE'), mode);
        assert.equal(
          envValue(agent ?? { name: '', image: '' }, 'SHOAL_AGENT_LABELS'),
          `shoal.io/role=${mode}`,
        );
      }
      const mixed = find(objects, 'DaemonSet', 'shoal-agent');
      assert.deepEqual(
        at(
          mixed,
          ...['spec', 'template', 'spec', 'affinity', 'nodeAffinity'],
          ...['requiredDuringSchedulingIgnoredDuringExecution', 'nodeSelectorTerms', 0],
          ...['matchExpressions', 0],
        ),
        { key: 'shoal.io/agent-mode', operator: 'NotIn', values: ['seeder', 'leecher'] },
      );
      // Each DaemonSet owns only its own pods.
      const selectors = AGENT_DAEMONSETS.map((n) =>
        JSON.stringify(at(find(objects, 'DaemonSet', n), 'spec', 'selector')),
      );
      assert.equal(new Set(selectors).size, AGENT_DAEMONSETS.length);
    });

    it('renders no Prometheus Operator object unless the monitoring component is added', () => {
      for (const name of OVERLAYS) {
        const operatorObjects = overlay(name).filter((o) =>
          o.apiVersion.startsWith('monitoring.coreos.com/'),
        );
        assert.deepEqual(names(operatorObjects), [], name);
      }
    });

    it("caps the tracker's V8 heap at three quarters of its memory limit, split or not", async () => {
      const split = await renderWithComponents('mixed', ['tracker-split']);
      for (const [where, objects] of [
        ['mixed', overlay('mixed')],
        ['seeder', overlay('seeder')],
        ['mixed + tracker-split', split],
      ] as const) {
        const tracker = podSpec(find(objects, 'Deployment', 'shoal-tracker')).containers[0];
        assert.ok(tracker !== undefined, where);
        const limit = quantityBytes(tracker.resources?.limits?.memory ?? '') / 2 ** 20;
        const cap = /--max-old-space-size=(\d+)/.exec(envValue(tracker, 'NODE_OPTIONS') ?? '');
        assert.ok(cap !== null, `${where}: no heap cap in NODE_OPTIONS`);
        assert.equal(Number(cap[1]), (limit * 3) / 4, `${where}: cap against a ${limit} MiB limit`);
      }
    });

    it('has monitors and alerts (component), disruption budgets and network policies', async () => {
      const objects = await renderWithComponents('mixed', ['monitoring']);
      const all = names(objects);
      assert.ok(all.includes('PrometheusRule/shoal-alerts'));
      for (const service of ['tracker', 'seedserver', 'watcher']) {
        const monitor = find(objects, 'ServiceMonitor', `shoal-${service}`);
        assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
        assert.equal(at(monitor, 'spec', 'endpoints', 0, 'path'), '/metrics');
      }
      const agentMonitor = find(objects, 'PodMonitor', 'shoal-agent');
      assert.equal(at(agentMonitor, 'spec', 'podMetricsEndpoints', 0, 'port'), 'peer');
      for (const component of ['nats', 'tracker', 'seedserver', 'watcher']) {
        assert.ok(all.includes(`PodDisruptionBudget/shoal-${component}`), component);
      }
      for (const component of ['nats', 'tracker', 'seedserver', 'watcher', 'object-gateway']) {
        assert.ok(all.includes(`NetworkPolicy/shoal-${component}`), component);
      }
      const deny = find(objects, 'NetworkPolicy', 'shoal-default-deny-ingress');
      assert.deepEqual(at(deny, 'spec', 'podSelector'), {});
      const natsPolicy = JSON.stringify(find(objects, 'NetworkPolicy', 'shoal-nats'));
      for (const port of [4222, 6222]) {
        assert.ok(natsPolicy.includes(`"port":${port}`), `NATS policy lacks ${port}`);
      }
    });

    it('stores blobs in the object gateway (versitygw), its bucket made before it serves', () => {
      const objects = overlay('mixed');
      const [seed] = podSpec(find(objects, 'StatefulSet', 'shoal-seedserver')).containers;
      assert.ok(seed !== undefined);
      assert.equal(envValue(seed, 'SHOAL_STORE_KIND'), 's3');
      assert.equal(envValue(seed, 'SHOAL_S3_ENDPOINT'), 'http://shoal-object-gateway:7070');
      assert.equal(envValue(seed, 'SHOAL_S3_BUCKET'), 'shoal');
      const gateway = podSpec(find(objects, 'StatefulSet', 'shoal-object-gateway'));
      const [server] = gateway.containers;
      assert.ok(server !== undefined);
      assert.match(server.image, /^ghcr\.io\/versity\/versitygw:v\d+\.\d+\.\d+$/);
      assert.deepEqual(server.args, ['--port', ':7070', 'posix', '/data']);
      // Its one account is the seed server's key, from the same Secret.
      for (const [variable, key] of [
        ['ROOT_ACCESS_KEY_ID', 'SHOAL_S3_ACCESS_KEY_ID'],
        ['ROOT_SECRET_ACCESS_KEY', 'SHOAL_S3_SECRET_ACCESS_KEY'],
      ]) {
        assert.deepEqual(server.env?.find((e) => e.name === variable)?.valueFrom?.secretKeyRef, {
          name: 'shoal-seedserver-s3',
          key,
        });
      }
      const bucket = gateway.initContainers?.[0];
      assert.equal(bucket?.image, server.image);
      assert.match(JSON.stringify(bucket), /mkdir -p \/data\/shoal/);
      assert.equal(objects.filter((o) => /minio/i.test(JSON.stringify(o))).length, 0);
    });
  });

  describe('leecher', () => {
    it('runs only agents, pointed at a remote NATS', () => {
      const objects = overlay('leecher');
      assert.deepEqual(
        workloads(objects)
          .map((w) => `${w.kind}/${w.metadata.name}`)
          .sort(),
        AGENT_DAEMONSETS.map((n) => `DaemonSet/${n}`).sort(),
      );
      for (const name of AGENT_DAEMONSETS) {
        const [agent] = podSpec(find(objects, 'DaemonSet', name)).containers;
        const url = envValue(agent ?? { name: '', image: '' }, 'SHOAL_NATS_URL') ?? '';
        assert.doesNotMatch(url, /@shoal-nats:/, `${name} must use the seeder's NATS`);
      }
      assert.ok(configData(objects, 'shoal-config').SHOAL_AGENT_ZONE);
    });
  });

  describe('seeder', () => {
    it('runs NATS, the object gateway, trackers, the seed server and the watcher, and no agents', () => {
      const objects = overlay('seeder');
      assert.equal(objects.filter((o) => o.kind === 'DaemonSet').length, 0);
      assert.equal(at(find(objects, 'Deployment', 'shoal-tracker'), 'spec', 'replicas'), 2);
      assert.equal(at(find(objects, 'Deployment', 'shoal-watcher'), 'spec', 'replicas'), 2);
      assert.equal(at(find(objects, 'StatefulSet', 'shoal-nats'), 'spec', 'replicas'), 3);
      find(objects, 'StatefulSet', 'shoal-seedserver');
      find(objects, 'StatefulSet', 'shoal-object-gateway');
      assert.equal(configData(objects, 'shoal-config').SHOAL_NATS_STREAM_REPLICAS, '3');
    });

    it('publishes NATS and the seed server to other clusters', () => {
      const objects = overlay('seeder');
      for (const name of ['shoal-nats-public', 'shoal-seedserver-public']) {
        assert.equal(at(find(objects, 'Service', name), 'spec', 'type'), 'LoadBalancer');
      }
      const [seed] = podSpec(find(objects, 'StatefulSet', 'shoal-seedserver')).containers;
      assert.doesNotMatch(
        envValue(seed ?? { name: '', image: '' }, 'SHOAL_SEED_URL') ?? '',
        /\.svc[:/]/,
        'remote agents cannot resolve in-cluster names',
      );
    });
  });
});
