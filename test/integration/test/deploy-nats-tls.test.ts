/**
 * The kustomize components that put NATS on TLS: with `nats-tls` in an overlay, every Shoal
 * service connects with a client certificate of its role from a Secret that a cert-manager
 * Certificate in the same render writes, the NATS servers mount theirs, and the rendered NATS
 * configuration (with the test's own certificates in place of cert-manager's) is one that
 * nats-server accepts, with TLS on client connections and on the cluster's routes. A leecher
 * cluster takes `nats-tls-clients` alone.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { makeTempDir, makeTestCa, requireBinary, run, type TestCa } from '@shoal/testkit';

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

const TLS_ENV = {
  SHOAL_NATS_TLS_CA_FILE: 'ca.crt',
  SHOAL_NATS_TLS_CERT_FILE: 'tls.crt',
  SHOAL_NATS_TLS_KEY_FILE: 'tls.key',
} as const;

/** The Shoal containers of a render, with their workload. */
function shoalContainers(objects: readonly K8sObject[]): { workload: K8sObject; c: Container }[] {
  return workloads(objects).flatMap((workload) =>
    podSpec(workload)
      .containers.filter((c) => c.image.includes('/shoal:'))
      .map((c) => ({ workload, c })),
  );
}

/** The Secret a container's TLS files come from, checking that the env points into its mount. */
function tlsSecretOf(workload: K8sObject, container: Container): string {
  const where = `${workload.kind}/${workload.metadata.name}`;
  const caFile = envValue(container, 'SHOAL_NATS_TLS_CA_FILE');
  assert.ok(caFile !== undefined, `${where}: no SHOAL_NATS_TLS_CA_FILE`);
  const dir = caFile.slice(0, caFile.lastIndexOf('/'));
  for (const [name, file] of Object.entries(TLS_ENV)) {
    assert.equal(envValue(container, name), `${dir}/${file}`, `${where}: ${name}`);
  }
  const mount = container.volumeMounts?.find((m) => m.mountPath === dir);
  assert.ok(mount !== undefined, `${where}: nothing mounted at ${dir}`);
  const volume = podSpec(workload).volumes?.find((v) => v.name === mount.name);
  const secret = volume?.secret?.secretName;
  assert.ok(secret !== undefined, `${where}: ${dir} is not a Secret`);
  return secret;
}

function certificateSecrets(objects: readonly K8sObject[]): Set<string> {
  return new Set(
    objects.filter((o) => o.kind === 'Certificate').map((o) => String(at(o, 'spec', 'secretName'))),
  );
}

describe('deploy/k8s NATS over TLS', () => {
  const rendered = new Map<string, K8sObject[]>();
  let ca: TestCa;

  before(async () => {
    rendered.set('mixed', await renderWithComponents('mixed', ['nats-tls']));
    rendered.set('seeder', await renderWithComponents('seeder', ['nats-tls']));
    rendered.set('leecher', await renderWithComponents('leecher', ['nats-tls-clients']));
    ca = await makeTestCa();
  });

  after(async () => {
    await ca.remove();
  });

  for (const overlay of ['mixed', 'seeder'] as const) {
    it(`${overlay}: every service connects with its role's certificate, which the render issues`, () => {
      const objects = rendered.get(overlay) ?? [];
      const issued = certificateSecrets(objects);
      const containers = shoalContainers(objects);
      assert.ok(containers.length >= 3);
      for (const { workload, c } of containers) {
        const secret = tlsSecretOf(workload, c);
        assert.ok(issued.has(secret), `${workload.metadata.name}: ${secret} is issued`);
        const role = /^shoal-(agent|tracker|seedserver|watcher)/.exec(workload.metadata.name)?.[1];
        assert.equal(secret, `shoal-nats-client-${String(role)}`);
      }
      const nats = podSpec(find(objects, 'StatefulSet', 'shoal-nats'));
      const serverVolume = nats.volumes?.find((v) => v.secret?.secretName === 'shoal-nats-server');
      assert.ok(serverVolume !== undefined && issued.has('shoal-nats-server'));
      const mounts = nats.containers.find((c) => c.name === 'nats')?.volumeMounts ?? [];
      assert.ok(
        mounts.some((m) => m.name === serverVolume.name && m.mountPath === '/etc/nats/tls'),
      );
    });

    it(`${overlay}: nats-server accepts the rendered configuration, TLS on clients and routes`, async () => {
      const objects = rendered.get(overlay) ?? [];
      const configMap = objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
      );
      assert.ok(configMap !== undefined);
      const files = configMap.data as Record<string, string>;
      assert.match(files['tls.conf'] ?? '', /verify: true/);
      assert.match(files['cluster-tls.conf'] ?? '', /verify: true/);
      const dir = await makeTempDir('nats-tls-conf');
      try {
        // cert-manager's files, here from the test's CA; node paths under the directory.
        const cert = await ca.issue('shoal-nats-server');
        const tlsDir = join(dir.path, 'tls');
        await mkdir(tlsDir);
        await writeFile(join(tlsDir, 'ca.crt'), await readFile(ca.caFile));
        await writeFile(join(tlsDir, 'tls.crt'), await readFile(cert.certFile));
        await writeFile(join(tlsDir, 'tls.key'), await readFile(cert.keyFile));
        for (const [name, text] of Object.entries(files)) {
          await writeFile(
            join(dir.path, name),
            text
              .replaceAll('/etc/nats/tls', tlsDir)
              .replaceAll('/data/', `${dir.path}/data/`)
              .replaceAll('/var/run/nats', dir.path),
          );
        }
        const nats = requireBinary('nats-server');
        const { stdout, stderr } = await run(nats, ['-c', join(dir.path, 'nats.conf'), '-t'], {
          env: {
            PATH: process.env.PATH ?? '',
            POD_NAME: 'shoal-nats-0',
            NATS_AGENT_PASSWORD: 'a-0123456789',
            NATS_TRACKER_PASSWORD: 't-0123456789',
            NATS_SEEDSERVER_PASSWORD: 's-0123456789',
            NATS_WATCHER_PASSWORD: 'w-0123456789',
          },
        });
        assert.match(`${stdout}${stderr}`, /is valid/);
      } finally {
        await dir.remove();
      }
    });
  }

  it('leecher: agents connect with TLS from the Secret copied from the seeder cluster', () => {
    const objects = rendered.get('leecher') ?? [];
    const containers = shoalContainers(objects);
    assert.equal(containers.length, 3, 'the three agent DaemonSets');
    for (const { workload, c } of containers) {
      assert.equal(tlsSecretOf(workload, c), 'shoal-nats-client-agent');
    }
    assert.equal(certificateSecrets(objects).size, 0, 'no cert-manager objects in a leecher');
  });
});
