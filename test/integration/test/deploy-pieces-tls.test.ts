/**
 * The kustomize components that put pieces on TLS: with `pieces-tls` (after `nats-tls`, whose
 * CA it uses) every agent DaemonSet serves its peer port over HTTPS and announces an https://
 * URL, the seed server does the same, both ask for client certificates of the cluster CA, the
 * agents trust only that CA, and every Secret they mount is one a cert-manager Certificate of
 * the render writes, naming what the piece client checks. Probes and the monitors speak HTTPS.
 * A leecher cluster takes `pieces-tls-agents` alone. A certificate made from the rendered
 * names passes the check the piece client makes (CA and server name).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect, createServer } from 'node:tls';

import { makeTestCa, type TestCa } from '@shoal/testkit';

import {
  at,
  envValue,
  find,
  podSpec,
  renderWithComponents,
  workloads,
  type Container,
  type K8sObject,
} from '../src/deploy.js';

const MOUNT = '/etc/shoal/pieces-tls';
/** The name piece clients check on every piece server's certificate. */
const SERVER_NAME = 'shoal-pieces';

const AGENT_ENV = {
  SHOAL_AGENT_PEER_TLS_CERT_FILE: `${MOUNT}/tls.crt`,
  SHOAL_AGENT_PEER_TLS_KEY_FILE: `${MOUNT}/tls.key`,
  SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE: `${MOUNT}/ca.crt`,
  SHOAL_AGENT_PIECE_TLS_CA_FILE: `${MOUNT}/ca.crt`,
  SHOAL_AGENT_PIECE_TLS_CERT_FILE: `${MOUNT}/tls.crt`,
  SHOAL_AGENT_PIECE_TLS_KEY_FILE: `${MOUNT}/tls.key`,
} as const;

const SEED_ENV = {
  SHOAL_SEED_TLS_CERT_FILE: `${MOUNT}/tls.crt`,
  SHOAL_SEED_TLS_KEY_FILE: `${MOUNT}/tls.key`,
  SHOAL_SEED_TLS_CLIENT_CA_FILE: `${MOUNT}/ca.crt`,
} as const;

function shoalContainer(workload: K8sObject): Container {
  const container = podSpec(workload).containers.find((c) => c.image.includes('/shoal:'));
  assert.ok(container !== undefined, `${workload.metadata.name}: no Shoal container`);
  return container;
}

/** The Secret mounted at the piece TLS directory of a workload. */
function mountedSecret(workload: K8sObject, container: Container): string | undefined {
  const mount = container.volumeMounts?.find((m) => m.mountPath === MOUNT);
  const volume = podSpec(workload).volumes?.find((v) => v.name === mount?.name);
  return volume?.secret?.secretName;
}

/** `$(NAME)` references in a value are defined by entries before it (Kubernetes expands only those). */
function assertExpandable(container: Container, name: string): void {
  const env = container.env ?? [];
  const index = env.findIndex((e) => e.name === name);
  const value = env[index]?.value ?? '';
  for (const [, ref] of value.matchAll(/\$\(([A-Z_]+)\)/g)) {
    const defined = env.findIndex((e) => e.name === ref);
    assert.ok(defined >= 0 && defined < index, `${name}: $(${String(ref)}) is defined before it`);
  }
}

function probes(container: Container): unknown[] {
  return ['startupProbe', 'livenessProbe', 'readinessProbe'].map((probe) =>
    at(container, probe, 'httpGet', 'scheme'),
  );
}

/** Certificates of the render by the Secret they write. */
function certificates(objects: readonly K8sObject[]): Map<string, K8sObject> {
  return new Map(
    objects
      .filter((o) => o.kind === 'Certificate')
      .map((o) => [String(at(o, 'spec', 'secretName')), o]),
  );
}

function dnsNames(certificate: K8sObject | undefined): string[] {
  return (at(certificate, 'spec', 'dnsNames') as string[] | undefined) ?? [];
}

describe('deploy/k8s pieces over TLS', () => {
  const rendered = new Map<string, K8sObject[]>();
  let ca: TestCa;

  before(async () => {
    for (const overlay of ['mixed', 'seeder']) {
      rendered.set(
        overlay,
        await renderWithComponents(overlay, ['monitoring', 'nats-tls', 'pieces-tls']),
      );
    }
    rendered.set('leecher', await renderWithComponents('leecher', ['pieces-tls-agents']));
    ca = await makeTestCa();
  });

  after(async () => {
    await ca.remove();
  });

  for (const overlay of ['mixed', 'seeder'] as const) {
    it(`${overlay}: agents and the seed server serve pieces over mutual TLS with issued certificates`, () => {
      const objects = rendered.get(overlay) ?? [];
      const issued = certificates(objects);
      for (const certificate of issued.values()) {
        const issuer = String(at(certificate, 'spec', 'issuerRef', 'name'));
        find(objects, 'Issuer', issuer);
      }
      const agents = workloads(objects).filter((w) => w.kind === 'DaemonSet');
      assert.equal(agents.length, overlay === 'mixed' ? 3 : 0, 'agent DaemonSets');
      // The name every piece server's certificate carries, as leecher agents check it too.
      assert.ok(dnsNames(issued.get('shoal-pieces-seedserver')).includes(SERVER_NAME));
      for (const agent of agents) {
        const c = shoalContainer(agent);
        const where = agent.metadata.name;
        assert.equal(envValue(c, 'SHOAL_AGENT_PEER_URL'), 'https://$(HOST_IP):65002', where);
        assertExpandable(c, 'SHOAL_AGENT_PEER_URL');
        for (const [name, value] of Object.entries(AGENT_ENV)) {
          assert.equal(envValue(c, name), value, `${where}: ${name}`);
        }
        const secret = mountedSecret(agent, c);
        assert.equal(secret, 'shoal-pieces-agent', where);
        assert.equal(envValue(c, 'SHOAL_AGENT_PIECE_TLS_SERVER_NAME'), SERVER_NAME, where);
        assert.ok(dnsNames(issued.get(secret)).includes(SERVER_NAME), `${where}: certificate`);
        assert.deepEqual(probes(c), ['HTTPS', 'HTTPS', 'HTTPS'], where);
      }
      const seedSet = find(objects, 'StatefulSet', 'shoal-seedserver');
      const seed = shoalContainer(seedSet);
      assert.match(envValue(seed, 'SHOAL_SEED_URL') ?? '', /^https:\/\//);
      assertExpandable(seed, 'SHOAL_SEED_URL');
      for (const [name, value] of Object.entries(SEED_ENV)) {
        assert.equal(envValue(seed, name), value, `seed server: ${name}`);
      }
      assert.equal(mountedSecret(seedSet, seed), 'shoal-pieces-seedserver');
      assert.ok(issued.has('shoal-pieces-seedserver'));
      assert.deepEqual(probes(seed), ['HTTPS', 'HTTPS', 'HTTPS']);
      // Prometheus scrapes both over HTTPS, trusting the cluster CA.
      const podMonitor = find(objects, 'PodMonitor', 'shoal-agent');
      assert.equal(at(podMonitor, 'spec', 'podMetricsEndpoints', 0, 'scheme'), 'https');
      const serviceMonitor = find(objects, 'ServiceMonitor', 'shoal-seedserver');
      assert.equal(at(serviceMonitor, 'spec', 'endpoints', 0, 'scheme'), 'https');
      assert.equal(
        at(serviceMonitor, 'spec', 'endpoints', 0, 'tlsConfig', 'ca', 'secret', 'name'),
        'shoal-ca',
      );
    });
  }

  it('mixed: a certificate with the rendered names passes the piece client check', async () => {
    const objects = rendered.get('mixed') ?? [];
    const issued = certificates(objects);
    const agent = shoalContainer(find(objects, 'DaemonSet', 'shoal-agent'));
    const serverName = envValue(agent, 'SHOAL_AGENT_PIECE_TLS_SERVER_NAME') ?? '';
    const caPem = await readFile(ca.caFile);
    for (const secret of ['shoal-pieces-agent', 'shoal-pieces-seedserver']) {
      // cert-manager's certificate, here from the test's CA with the rendered names.
      const names = dnsNames(issued.get(secret));
      const cert = await ca.issue(secret, names);
      const server = createServer({
        cert: await readFile(cert.certFile),
        key: await readFile(cert.keyFile),
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as AddressInfo).port;
      const handshake = (servername: string): Promise<void> =>
        new Promise((resolve, reject) => {
          // As the piece client: dialled by address, checked against the configured name.
          const socket = connect({ host: '127.0.0.1', port, ca: caPem, servername }, () => {
            socket.destroy();
            resolve();
          });
          socket.on('error', reject);
        });
      try {
        await handshake(serverName);
        await assert.rejects(handshake('not-shoal-pieces'), /altnames|does not match/i);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    }
  });

  it('leecher: agents use the Secret copied from the seeder cluster', () => {
    const objects = rendered.get('leecher') ?? [];
    const agents = workloads(objects).filter((w) => w.kind === 'DaemonSet');
    assert.equal(agents.length, 3);
    for (const agent of agents) {
      const c = shoalContainer(agent);
      assert.equal(mountedSecret(agent, c), 'shoal-pieces-agent');
      assert.equal(envValue(c, 'SHOAL_AGENT_PIECE_TLS_SERVER_NAME'), SERVER_NAME);
      assert.equal(envValue(c, 'SHOAL_AGENT_PEER_URL'), 'https://$(HOST_IP):65002');
      assertExpandable(c, 'SHOAL_AGENT_PEER_URL');
    }
    assert.equal(certificates(objects).size, 0, 'no cert-manager objects in a leecher');
  });
});
