import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { z } from 'zod';

import { ConfigError, envBool, envInt, envListen, envLogLevel, loadConfig } from '../src/config.js';
import { httpLimitsConfig, timeoutCheckMs } from '../src/http-limits.js';

const schema = z.object({
  SIZE_BYTES: envInt(1024),
  ENABLED: envBool(true),
  LISTEN: envListen('127.0.0.1:8080'),
  LOG_LEVEL: envLogLevel,
  NAME: z.string().min(1).default('shoal'),
});

/** The problems a ConfigError lists for `env`; fails when `env` is accepted. */
function problemsOf(
  target: z.ZodType,
  env: Record<string, string | undefined>,
  crossProblems: readonly string[] = [],
): readonly string[] {
  let thrown: unknown;
  try {
    loadConfig(target, env, crossProblems);
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown instanceof ConfigError, `${JSON.stringify(env)} should be refused`);
  return thrown.problems;
}

function only<T>(value: T): { readonly VALUE: T } {
  return { VALUE: value };
}

describe('loadConfig', () => {
  it('applies every default to an empty environment', () => {
    assert.deepEqual(loadConfig(schema, {}), {
      SIZE_BYTES: 1024,
      ENABLED: true,
      LISTEN: { host: '127.0.0.1', port: 8080 },
      LOG_LEVEL: 'info',
      NAME: 'shoal',
    });
  });

  it('treats an undefined variable as unset', () => {
    assert.equal(loadConfig(schema, { SIZE_BYTES: undefined }).SIZE_BYTES, 1024);
  });

  it('parses the variables given and ignores unknown ones', () => {
    assert.deepEqual(
      loadConfig(schema, {
        SIZE_BYTES: '65536',
        ENABLED: 'false',
        LISTEN: '[::1]:9000',
        LOG_LEVEL: 'trace',
        NAME: 'agent',
        PATH: '/usr/bin',
      }),
      {
        SIZE_BYTES: 65_536,
        ENABLED: false,
        LISTEN: { host: '::1', port: 9000 },
        LOG_LEVEL: 'trace',
        NAME: 'agent',
      },
    );
  });

  it('reports every problem at once, each with its variable', () => {
    let thrown: unknown;
    try {
      loadConfig(schema, {
        SIZE_BYTES: '-5',
        ENABLED: 'yes',
        LISTEN: 'localhost',
        LOG_LEVEL: 'loud',
        NAME: '',
      });
    } catch (error) {
      thrown = error;
    }
    assert.ok(thrown instanceof ConfigError);
    assert.equal(thrown.name, 'ConfigError');
    assert.equal(thrown.problems.length, 5, JSON.stringify(thrown.problems));
    for (const name of ['SIZE_BYTES', 'ENABLED', 'LISTEN', 'LOG_LEVEL', 'NAME']) {
      assert.equal(
        thrown.problems.filter((p) => p.startsWith(`${name}: `)).length,
        1,
        `${name}: ${JSON.stringify(thrown.problems)}`,
      );
    }
    assert.ok(thrown.problems.includes('SIZE_BYTES: must be a non-negative integer'));
    assert.ok(thrown.problems.includes('ENABLED: must be true or false'));
    assert.ok(thrown.problems.includes('LISTEN: "localhost" is not host:port'));
    // The message lists every problem, one a line, for the operator reading the log.
    for (const problem of thrown.problems) {
      assert.ok(thrown.message.includes(`\n  - ${problem}`), problem);
    }
  });

  it('adds the problems the caller found between variables to the others', () => {
    const cross = ['LISTEN: must differ from the metrics address'];
    assert.deepEqual(problemsOf(schema, {}, cross), cross);
    assert.deepEqual(problemsOf(schema, { SIZE_BYTES: 'big' }, cross), [
      'SIZE_BYTES: must be a non-negative integer',
      ...cross,
    ]);
    assert.equal(loadConfig(schema, {}, []).SIZE_BYTES, 1024);
  });

  it('reports a problem without a variable by its message alone', () => {
    const checked = z
      .object({ LOW: envInt(1), HIGH: envInt(2) })
      .refine((env) => env.LOW <= env.HIGH, { message: 'LOW must not exceed HIGH' });
    assert.deepEqual(problemsOf(checked, { LOW: '5' }), ['LOW must not exceed HIGH']);
    assert.deepEqual(loadConfig(checked, { LOW: '2', HIGH: '3' }), { LOW: 2, HIGH: 3 });
  });
});

describe('envInt', () => {
  const target = z.object({ VALUE: envInt(7) });

  it('defaults when unset', () => {
    assert.deepEqual(loadConfig(target, {}), only(7));
  });

  it('parses non-negative integers up to the largest safe one', () => {
    for (const [text, value] of [
      ['0', 0],
      ['1', 1],
      ['007', 7],
      ['30000', 30_000],
      [String(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER],
    ] as const) {
      assert.deepEqual(loadConfig(target, { VALUE: text }), only(value), text);
    }
  });

  it('refuses anything else', () => {
    for (const text of [
      '',
      ' ',
      '-1',
      '+1',
      '1.5',
      '1e3',
      '0x10',
      '10ms',
      ' 10',
      'ten',
      String(Number.MAX_SAFE_INTEGER + 2),
      '1'.repeat(400),
    ]) {
      const problems = problemsOf(target, { VALUE: text });
      assert.ok(problems.length > 0, text);
      for (const problem of problems) {
        assert.ok(problem.startsWith('VALUE: '), `${text}: ${problem}`);
      }
    }
  });
});

describe('envBool', () => {
  it('defaults when unset', () => {
    assert.deepEqual(loadConfig(z.object({ VALUE: envBool(true) }), {}), only(true));
    assert.deepEqual(loadConfig(z.object({ VALUE: envBool(false) }), {}), only(false));
  });

  it('parses true, false, 1 and 0', () => {
    const target = z.object({ VALUE: envBool(false) });
    assert.deepEqual(loadConfig(target, { VALUE: 'true' }), only(true));
    assert.deepEqual(loadConfig(target, { VALUE: '1' }), only(true));
    assert.deepEqual(loadConfig(target, { VALUE: 'false' }), only(false));
    assert.deepEqual(loadConfig(target, { VALUE: '0' }), only(false));
  });

  it('refuses anything else', () => {
    const target = z.object({ VALUE: envBool(false) });
    for (const text of ['', 'TRUE', 'False', 'yes', 'no', 'on', '2', ' true']) {
      assert.deepEqual(problemsOf(target, { VALUE: text }), ['VALUE: must be true or false']);
    }
  });
});

describe('envListen', () => {
  const target = z.object({ VALUE: envListen('127.0.0.1:65001') });

  it('defaults when unset', () => {
    assert.deepEqual(loadConfig(target, {}), only({ host: '127.0.0.1', port: 65001 }));
  });

  it('parses host names, IPv4 and bracketed IPv6 addresses', () => {
    for (const [text, host, port] of [
      ['[::1]:8080', '::1', 8080],
      ['[::]:443', '::', 443],
      ['[fe80::1%eth0]:80', 'fe80::1%eth0', 80],
      ['0.0.0.0:0', '0.0.0.0', 0],
      ['localhost:65535', 'localhost', 65535],
      ['agent.shoal.svc:5000', 'agent.shoal.svc', 5000],
    ] as const) {
      assert.deepEqual(loadConfig(target, { VALUE: text }), only({ host, port }), text);
    }
  });

  it('refuses what is not host:port', () => {
    for (const text of [
      '',
      'localhost',
      '8080',
      ':8080',
      'localhost:',
      'localhost:65536',
      'localhost:99999',
      'localhost:123456',
      'localhost:-1',
      'localhost:http',
      '::1:8080',
      '[::1]',
      '[::1]8080',
      'a:b:80',
    ]) {
      assert.deepEqual(
        problemsOf(target, { VALUE: text }),
        [`VALUE: "${text}" is not host:port`],
        text,
      );
    }
  });
});

describe('the HTTP limits', () => {
  const limits = (env: Record<string, string>) => loadConfig(httpLimitsConfig, env);

  it('check request timeouts every quarter of the shorter one, between 250 ms and 30 s', () => {
    assert.equal(timeoutCheckMs(limits({})), 2_500);
    assert.equal(timeoutCheckMs(limits({ SHOAL_HTTP_HEADERS_TIMEOUT_MS: '1000' })), 250);
    assert.equal(timeoutCheckMs(limits({ SHOAL_HTTP_HEADERS_TIMEOUT_MS: '400' })), 250);
    assert.equal(
      timeoutCheckMs(
        limits({
          SHOAL_HTTP_HEADERS_TIMEOUT_MS: '90000',
          SHOAL_HTTP_REQUEST_TIMEOUT_MS: '40000',
        }),
      ),
      10_000,
    );
    assert.equal(
      timeoutCheckMs(
        limits({
          SHOAL_HTTP_HEADERS_TIMEOUT_MS: '600000',
          SHOAL_HTTP_REQUEST_TIMEOUT_MS: '600000',
        }),
      ),
      30_000,
    );
  });
});
