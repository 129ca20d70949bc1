import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '@shoal/runtime';

import { loadAgentConfig } from '../src/config.js';
import { registriesList } from '@shoal/registry';

/** Registries as comparable text: `host=url`. */
function hostsAndUrls(text: string): string[] {
  return registriesList.parse(text).map((r) => `${r.host}=${r.url.href}`);
}

/** The messages of the issues `registriesList` reports for `text`. */
function registryProblems(text: string): string[] {
  const result = registriesList.safeParse(text);
  assert.equal(result.success, false, `${text} should be rejected`);
  return result.error.issues.map((issue) => issue.message);
}

/** The problems a ConfigError lists for `env`; fails when `env` is accepted. */
function configProblems(env: Record<string, string | undefined>): readonly string[] {
  let thrown: unknown;
  try {
    loadAgentConfig(env);
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown instanceof ConfigError, 'a ConfigError should be thrown');
  return thrown.problems;
}

function assertMentions(problems: readonly string[], ...words: string[]): void {
  for (const word of words) {
    assert.ok(
      problems.some((p) => p.includes(word)),
      `no problem mentions ${word}: ${JSON.stringify(problems)}`,
    );
  }
}

describe('registriesList', () => {
  it('maps docker.io to registry-1.docker.io', () => {
    assert.deepEqual(hostsAndUrls('docker.io'), ['docker.io=https://registry-1.docker.io/']);
  });

  it("reads Docker Hub's other names as docker.io, the name containerd asks for", () => {
    assert.deepEqual(hostsAndUrls('registry-1.docker.io'), [
      'docker.io=https://registry-1.docker.io/',
    ]);
    assert.deepEqual(hostsAndUrls('INDEX.docker.io=https://hub-mirror.example.com'), [
      'docker.io=https://hub-mirror.example.com/',
    ]);
    assertMentions(registryProblems('docker.io,registry-1.docker.io'), 'docker.io is listed twice');
    // The default registry may be named either way.
    const config = loadAgentConfig({
      SHOAL_AGENT_REGISTRIES: 'registry-1.docker.io',
      SHOAL_AGENT_DEFAULT_REGISTRY: 'index.docker.io',
    });
    assert.deepEqual(
      config.SHOAL_AGENT_REGISTRIES.map((r) => r.host),
      ['docker.io'],
    );
  });

  it('fetches a bare host over HTTPS from itself, port included', () => {
    assert.deepEqual(hostsAndUrls('ghcr.io,registry.example.com:5443'), [
      'ghcr.io=https://ghcr.io/',
      'registry.example.com:5443=https://registry.example.com:5443/',
    ]);
  });

  it('takes an explicit URL after =, http included', () => {
    assert.deepEqual(hostsAndUrls('127.0.0.1:5000=http://127.0.0.1:5000'), [
      '127.0.0.1:5000=http://127.0.0.1:5000/',
    ]);
    assert.deepEqual(hostsAndUrls('docker.io=https://mirror.example.com/base/'), [
      'docker.io=https://mirror.example.com/base/',
    ]);
  });

  it('keeps the order given and skips blanks around commas', () => {
    assert.deepEqual(hostsAndUrls(' quay.io , ,docker.io,'), [
      'quay.io=https://quay.io/',
      'docker.io=https://registry-1.docker.io/',
    ]);
  });

  it('refuses an empty list', () => {
    assert.deepEqual(registryProblems(''), ['name at least one registry to mirror']);
    assert.deepEqual(registryProblems(' , '), ['name at least one registry to mirror']);
  });

  it('refuses a host listed twice', () => {
    assertMentions(registryProblems('docker.io,ghcr.io,docker.io'), 'docker.io is listed twice');
    assertMentions(
      registryProblems('ghcr.io,ghcr.io=https://ghcr.example.com'),
      'ghcr.io is listed twice',
    );
  });

  it('refuses something that is not a URL', () => {
    assertMentions(registryProblems('example.com=not a url'), '"not a url"', 'not a URL');
  });

  it('refuses protocols other than http and https', () => {
    assertMentions(registryProblems('example.com=ftp://example.com'), 'only http and https');
    assertMentions(registryProblems('example.com=file:///etc/passwd'), 'only http and https');
  });

  it('refuses a host that is not a registry host', () => {
    assertMentions(registryProblems('bad host'), '"bad host" is not a registry host');
    assertMentions(registryProblems('=https://x.example.com'), 'is not a registry host');
  });

  it('reports every bad entry at once', () => {
    const problems = registryProblems(
      'docker.io,docker.io,a.example.com=::,b.example.com=ftp://b,bad host',
    );
    assert.equal(problems.length, 4, JSON.stringify(problems));
    assertMentions(problems, 'listed twice', 'not a URL', 'only http and https', '"bad host"');
  });
});

describe('loadAgentConfig', () => {
  it('pings NATS less often and spreads reconnects wider than the services do', () => {
    const config = loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io' });
    assert.equal(config.SHOAL_NATS_PING_INTERVAL_MS, 20_000);
    assert.equal(config.SHOAL_NATS_RECONNECT_JITTER_MS, 3000);
    const tuned = loadAgentConfig({
      SHOAL_AGENT_REGISTRIES: 'docker.io',
      SHOAL_NATS_PING_INTERVAL_MS: '5000',
      SHOAL_NATS_RECONNECT_JITTER_MS: '0',
    });
    assert.equal(tuned.SHOAL_NATS_PING_INTERVAL_MS, 5000);
    assert.equal(tuned.SHOAL_NATS_RECONNECT_JITTER_MS, 0);
    assertMentions(
      configProblems({ SHOAL_AGENT_REGISTRIES: 'docker.io', SHOAL_NATS_PING_INTERVAL_MS: '10' }),
      'SHOAL_NATS_PING_INTERVAL_MS',
    );
  });

  it('applies the defaults', () => {
    const config = loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io' });
    assert.deepEqual(config.SHOAL_AGENT_LISTEN, { host: '127.0.0.1', port: 65001 });
    assert.equal(config.SHOAL_AGENT_CACHE_DIR, '/var/lib/shoal/agent');
    assert.equal(config.SHOAL_AGENT_CACHE_MAX_BYTES, 50 * 1024 ** 3);
    assert.equal(config.SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS, 10_000);
    assert.equal(config.SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS, 30_000);
    assert.equal(config.SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS, 10_000);
    assert.equal(config.SHOAL_AGENT_MAX_MANIFEST_BYTES, 4 * 1024 * 1024);
    assert.equal(config.SHOAL_SHUTDOWN_TIMEOUT_MS, 30_000);
    assert.equal(config.SHOAL_LOG_LEVEL, 'info');
    assert.equal(config.SHOAL_AGENT_DEFAULT_REGISTRY, undefined);
    assert.deepEqual(
      config.SHOAL_AGENT_REGISTRIES.map((r) => [r.host, r.url.href]),
      [['docker.io', 'https://registry-1.docker.io/']],
    );
    // No fixed time per piece: a silence limit and a rate floor.
    assert.equal(config.SHOAL_AGENT_PIECE_IDLE_TIMEOUT_MS, 15_000);
    assert.equal(config.SHOAL_AGENT_PIECE_MIN_RATE_BYTES, 16 * 1024);
  });

  it('reads every variable', () => {
    const config = loadAgentConfig({
      SHOAL_AGENT_LISTEN: '[::]:5000',
      SHOAL_LOG_LEVEL: 'debug',
      SHOAL_SHUTDOWN_TIMEOUT_MS: '500',
      SHOAL_AGENT_REGISTRIES: 'docker.io,127.0.0.1:5000=http://127.0.0.1:5000',
      SHOAL_AGENT_DEFAULT_REGISTRY: '127.0.0.1:5000',
      SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS: '1',
      SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS: '2',
      SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: '3',
      SHOAL_AGENT_MAX_MANIFEST_BYTES: '4',
      SHOAL_AGENT_CACHE_DIR: '/tmp/shoal-cache',
      SHOAL_AGENT_CACHE_MAX_BYTES: '1048576',
    });
    assert.deepEqual(config.SHOAL_AGENT_LISTEN, { host: '::', port: 5000 });
    assert.equal(config.SHOAL_LOG_LEVEL, 'debug');
    assert.equal(config.SHOAL_SHUTDOWN_TIMEOUT_MS, 500);
    assert.deepEqual(
      config.SHOAL_AGENT_REGISTRIES.map((r) => [r.host, r.url.href]),
      [
        ['docker.io', 'https://registry-1.docker.io/'],
        ['127.0.0.1:5000', 'http://127.0.0.1:5000/'],
      ],
    );
    assert.equal(config.SHOAL_AGENT_DEFAULT_REGISTRY, '127.0.0.1:5000');
    assert.equal(config.SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS, 1);
    assert.equal(config.SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS, 2);
    assert.equal(config.SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS, 3);
    assert.equal(config.SHOAL_AGENT_MAX_MANIFEST_BYTES, 4);
    assert.equal(config.SHOAL_AGENT_CACHE_DIR, '/tmp/shoal-cache');
    assert.equal(config.SHOAL_AGENT_CACHE_MAX_BYTES, 1_048_576);
  });

  it('requires the registries to mirror', () => {
    const problems = configProblems({});
    assert.equal(problems.length, 1);
    assertMentions(problems, 'SHOAL_AGENT_REGISTRIES');
  });

  it('requires the default registry to be listed', () => {
    const problems = configProblems({
      SHOAL_AGENT_REGISTRIES: 'docker.io,ghcr.io',
      SHOAL_AGENT_DEFAULT_REGISTRY: 'quay.io',
    });
    assert.equal(problems.length, 1, JSON.stringify(problems));
    assert.match(problems[0] ?? '', /^SHOAL_AGENT_DEFAULT_REGISTRY: .*"quay\.io"/);
    assert.equal(
      loadAgentConfig({
        SHOAL_AGENT_REGISTRIES: 'docker.io,ghcr.io',
        SHOAL_AGENT_DEFAULT_REGISTRY: 'ghcr.io',
      }).SHOAL_AGENT_DEFAULT_REGISTRY,
      'ghcr.io',
    );
  });

  it('names the variable of each registry problem', () => {
    const problems = configProblems({
      SHOAL_AGENT_REGISTRIES: 'docker.io,docker.io,x.example.com=ftp://x.example.com',
    });
    assert.deepEqual(problems, [
      'SHOAL_AGENT_REGISTRIES: docker.io is listed twice',
      'SHOAL_AGENT_REGISTRIES: x.example.com: only http and https upstreams are supported',
    ]);
  });

  it('refuses bad numbers, listen addresses, log levels and an empty cache dir', () => {
    for (const [name, value] of [
      ['SHOAL_AGENT_LISTEN', '127.0.0.1'],
      ['SHOAL_AGENT_LISTEN', '127.0.0.1:65536'],
      ['SHOAL_LOG_LEVEL', 'verbose'],
      ['SHOAL_SHUTDOWN_TIMEOUT_MS', '-1'],
      ['SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS', '1.5'],
      ['SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS', '10s'],
      ['SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS', ''],
      ['SHOAL_AGENT_MAX_MANIFEST_BYTES', '1e6'],
      ['SHOAL_AGENT_CACHE_MAX_BYTES', '9007199254740993'],
      ['SHOAL_AGENT_CACHE_DIR', ''],
      ['SHOAL_AGENT_PIECE_IDLE_TIMEOUT_MS', '0'],
      ['SHOAL_AGENT_PIECE_MIN_RATE_BYTES', '-1'],
    ] as const) {
      const problems = configProblems({ SHOAL_AGENT_REGISTRIES: 'docker.io', [name]: value });
      assert.ok(problems.length > 0);
      for (const problem of problems) {
        assert.ok(problem.startsWith(`${name}: `), `${name}=${value}: ${problem}`);
      }
    }
  });

  it('reports several bad variables in one ConfigError', () => {
    const problems = configProblems({
      SHOAL_AGENT_LISTEN: 'nowhere',
      SHOAL_AGENT_REGISTRIES: 'docker.io,y.example.com=ftp://y.example.com',
      SHOAL_AGENT_CACHE_MAX_BYTES: '-1',
      SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: 'soon',
      SHOAL_LOG_LEVEL: 'loud',
    });
    assert.equal(problems.length, 5, JSON.stringify(problems));
    assertMentions(
      problems,
      'SHOAL_AGENT_LISTEN: ',
      'SHOAL_AGENT_REGISTRIES: ',
      'SHOAL_AGENT_CACHE_MAX_BYTES: ',
      'SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: ',
      'SHOAL_LOG_LEVEL: ',
    );
  });

  it('reports an unlisted default registry together with the other problems', () => {
    // The cross-variable check must not wait for the other variables to be fixed first.
    const problems = configProblems({
      SHOAL_AGENT_REGISTRIES: 'docker.io',
      SHOAL_AGENT_DEFAULT_REGISTRY: 'quay.io',
      SHOAL_AGENT_LISTEN: 'nowhere',
      SHOAL_AGENT_CACHE_MAX_BYTES: '-1',
    });
    assertMentions(
      problems,
      'SHOAL_AGENT_LISTEN: ',
      'SHOAL_AGENT_CACHE_MAX_BYTES: ',
      'SHOAL_AGENT_DEFAULT_REGISTRY: ',
    );
    assert.equal(problems.length, 3, JSON.stringify(problems));
  });
});

describe('piece authentication settings', () => {
  const swarm = { SHOAL_AGENT_REGISTRIES: 'docker.io', SHOAL_NATS_URL: 'nats://nats:4222' };

  it('needs the tracker public keys when the agent serves pieces', () => {
    assertMentions(configProblems(swarm), 'SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: required');
    const config = loadAgentConfig({
      ...swarm,
      SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: '/etc/shoal/handout/handout.pub',
    });
    assert.equal(config.SHOAL_AGENT_PIECE_AUTH, 'on');
    assert.equal(config.SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE, '/etc/shoal/handout/handout.pub');
  });

  it('does not need them without a swarm, for a leecher, or when explicitly off', () => {
    assert.doesNotThrow(() => loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io' }));
    assert.doesNotThrow(() => loadAgentConfig({ ...swarm, SHOAL_AGENT_MODE: 'leecher' }));
    const open = loadAgentConfig({ ...swarm, SHOAL_AGENT_PIECE_AUTH: 'off' });
    assert.equal(open.SHOAL_AGENT_PIECE_AUTH, 'off');
    assertMentions(
      configProblems({ ...swarm, SHOAL_AGENT_PIECE_AUTH: 'no' }),
      'SHOAL_AGENT_PIECE_AUTH',
    );
  });

  it("refuses the deploy files' placeholder NATS password", () => {
    assertMentions(
      configProblems({
        ...swarm,
        SHOAL_NATS_URL: 'nats://agent:change-me-agent@nats:4222',
        SHOAL_AGENT_PIECE_AUTH: 'off',
      }),
      "SHOAL_NATS_URL: holds the deploy files' placeholder",
    );
  });
});

describe('pieces over TLS settings', () => {
  const swarm = {
    SHOAL_AGENT_REGISTRIES: 'docker.io',
    SHOAL_NATS_URL: 'nats://127.0.0.1:4222',
    SHOAL_AGENT_PIECE_AUTH: 'off',
  };
  const tls = {
    SHOAL_AGENT_PEER_TLS_CERT_FILE: '/etc/shoal/pieces-tls/tls.crt',
    SHOAL_AGENT_PEER_TLS_KEY_FILE: '/etc/shoal/pieces-tls/tls.key',
  };

  it('takes an https:// peer URL with a certificate, and the piece client settings', () => {
    const config = loadAgentConfig({
      ...swarm,
      ...tls,
      SHOAL_AGENT_PEER_URL: 'https://10.0.0.7:65002',
      SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE: '/etc/shoal/pieces-tls/ca.crt',
      SHOAL_AGENT_PIECE_TLS_CA_FILE: '/etc/shoal/pieces-tls/ca.crt',
      SHOAL_AGENT_PIECE_TLS_SERVER_NAME: 'shoal-pieces',
    });
    assert.equal(config.SHOAL_AGENT_PEER_TLS_CERT_FILE, tls.SHOAL_AGENT_PEER_TLS_CERT_FILE);
    assert.equal(config.SHOAL_AGENT_PIECE_TLS_SERVER_NAME, 'shoal-pieces');
  });

  it('refuses a peer URL whose scheme is not what the peer port serves', () => {
    assertMentions(
      configProblems({ ...swarm, ...tls, SHOAL_AGENT_PEER_URL: 'http://10.0.0.7:65002' }),
      'SHOAL_AGENT_PEER_URL: must be https://',
    );
    assertMentions(
      configProblems({ ...swarm, SHOAL_AGENT_PEER_URL: 'https://10.0.0.7:65002' }),
      'SHOAL_AGENT_PEER_URL: https:// needs SHOAL_AGENT_PEER_TLS_CERT_FILE',
    );
  });

  it('refuses a client certificate without its key', () => {
    assertMentions(
      configProblems({ ...swarm, SHOAL_AGENT_PIECE_TLS_CERT_FILE: '/tls.crt' }),
      'SHOAL_AGENT_PIECE_TLS_CERT_FILE and SHOAL_AGENT_PIECE_TLS_KEY_FILE',
    );
  });
});
