/**
 * A certificate authority of the test's own, made with the openssl command line: a CA and
 * the certificates it issues (P-256 keys, valid two days), for servers on loopback and for
 * clients that must show a certificate. Everything lives in one temporary directory.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { makeTempDir, requireBinary, run } from './process.js';

/** A certificate and its key, as PEM files. */
export interface IssuedCert {
  readonly certFile: string;
  readonly keyFile: string;
}

export interface TestCa {
  /** The CA's certificate (PEM), to trust. */
  readonly caFile: string;
  /**
   * Issues a certificate named `name`, valid for loopback (`127.0.0.1`, `localhost`) and any
   * further `hosts`, usable by a server and as a client certificate.
   */
  issue(name: string, hosts?: readonly string[]): Promise<IssuedCert>;
  remove(): Promise<void>;
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

export async function makeTestCa(name = 'shoal-test-ca'): Promise<TestCa> {
  const openssl = requireBinary('openssl');
  const dir = await makeTempDir('ca');
  const caFile = join(dir.path, 'ca.pem');
  const caKey = join(dir.path, 'ca.key');
  await writeSelfSigned({
    keyArgs: KEY_ARGS,
    keyFile: caKey,
    certFile: caFile,
    name,
    keyUsage: 'keyCertSign,cRLSign',
  });
  let serial = 1;
  return {
    caFile,
    issue: async (certName, hosts = []) => {
      const base = join(dir.path, certName.replace(/[^a-zA-Z0-9_-]/g, '_'));
      const names = ['IP:127.0.0.1', 'DNS:localhost', ...hosts.map(subjectAltName)];
      await writeFile(
        `${base}.ext`,
        [
          'basicConstraints=CA:FALSE',
          'keyUsage=critical,digitalSignature,keyEncipherment',
          'extendedKeyUsage=serverAuth,clientAuth',
          `subjectAltName=${names.join(',')}`,
          '',
        ].join('\n'),
      );
      await run(openssl, [
        'req',
        ...KEY_ARGS,
        '-keyout',
        `${base}.key`,
        '-out',
        `${base}.csr`,
        '-subj',
        `/CN=${certName}`,
      ]);
      await run(openssl, [
        'x509',
        '-req',
        '-in',
        `${base}.csr`,
        '-CA',
        caFile,
        '-CAkey',
        caKey,
        '-set_serial',
        String((serial += 1)),
        '-days',
        '2',
        '-extfile',
        `${base}.ext`,
        '-out',
        `${base}.pem`,
      ]);
      return { certFile: `${base}.pem`, keyFile: `${base}.key` };
    },
    remove: () => dir.remove(),
  };
}

/**
 * Writes a self-signed CA certificate and its key with openssl: `keyArgs` choose the key (e.g.
 * `-newkey ec ...` or `-newkey rsa:2048 -nodes`), valid two days.
 */
export async function writeSelfSigned(options: {
  readonly keyArgs: readonly string[];
  readonly keyFile: string;
  readonly certFile: string;
  readonly name: string;
  readonly keyUsage: string;
}): Promise<void> {
  await run(requireBinary('openssl'), [
    'req',
    '-x509',
    ...options.keyArgs,
    '-keyout',
    options.keyFile,
    '-out',
    options.certFile,
    '-days',
    '2',
    '-subj',
    `/CN=${options.name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    `keyUsage=critical,${options.keyUsage}`,
  ]);
}

function subjectAltName(host: string): string {
  return /^[\d.]+$|:/.test(host) ? `IP:${host}` : `DNS:${host}`;
}
