/**
 * Configuration from environment variables. Each component declares a zod object of the
 * variables it reads (with defaults and units in the names); a service merges them and calls
 * `loadConfig`, the only place that reads the environment.
 */
import { z } from 'zod';

/** Every problem with the environment at once, so an operator fixes them in one go. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.problems = problems;
  }
}

/**
 * Validates `env` against `schema`; throws a `ConfigError` naming every bad variable, together
 * with `crossProblems` (problems the caller found between variables, as `NAME: reason`).
 */
export function loadConfig<S extends z.ZodType>(
  schema: S,
  env: Record<string, string | undefined>,
  crossProblems: readonly string[] = [],
): z.infer<S> {
  const result = schema.safeParse(env);
  const problems = result.success
    ? []
    : result.error.issues.map((issue) => {
        const key = issue.path.map(String).join('.');
        return key === '' ? issue.message : `${key}: ${issue.message}`;
      });
  problems.push(...crossProblems, ...placeholderProblems(env));
  if (result.success && problems.length === 0) {
    return result.data;
  }
  throw new ConfigError(problems);
}

/** A non-negative integer given as text, e.g. a size in bytes or a duration in ms. */
export const envInt = (defaultValue: number) =>
  z
    .string()
    .default(String(defaultValue))
    .transform((text, ctx): number => {
      const value = Number(text);
      if (!/^\d+$/.test(text) || !Number.isSafeInteger(value)) {
        ctx.addIssue({ code: 'custom', message: 'must be a non-negative integer' });
        return z.NEVER;
      }
      return value;
    })
    // The type the configuration reference (docs/configuration.md) shows.
    .meta({ envType: 'integer' });

/** A boolean given as `true`/`false`/`1`/`0`. */
export const envBool = (defaultValue: boolean) =>
  z
    .enum(['true', 'false', '1', '0'], { message: 'must be true or false' })
    .transform((v) => v === 'true' || v === '1')
    .default(defaultValue)
    .meta({ envType: '`true` \\| `false`' });

/** A `host:port` address to listen on; `[::]:p` and `0.0.0.0:p` listen on every interface. */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export const envListen = (defaultValue: string) =>
  z
    .string()
    .default(defaultValue)
    .transform((text, ctx): ListenAddress => {
      const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
      const port = Number(match?.[3]);
      const host = match?.[1] ?? match?.[2];
      if (host === undefined || !(port >= 0 && port <= 65535)) {
        ctx.addIssue({ code: 'custom', message: `"${text}" is not host:port` });
        return z.NEVER;
      }
      return { host, port };
    })
    .meta({ envType: 'host:port' });

/** pino's log levels. */
export const envLogLevel = z
  .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  .default('info')
  .describe('pino log level; `debug` also logs every request.');

/**
 * TLS to NATS. With a CA file the connection is TLS and the server's certificate must chain to
 * that CA (and name the host dialled); a client certificate is presented too when the server
 * verifies its clients (mutual TLS). A `tls://` URL asks for TLS with the system's CAs.
 */
// Here rather than in `./nats.js`, so that a config that reads these does not load the NATS
// client (the agent without a swarm never does).
export const natsTlsConfig = z.object({
  /** PEM CA bundle that NATS servers' certificates must chain to; set, TLS is required. */
  SHOAL_NATS_TLS_CA_FILE: z.string().min(1).optional(),
  /** PEM client certificate for servers that verify clients (with SHOAL_NATS_TLS_KEY_FILE). */
  SHOAL_NATS_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key of SHOAL_NATS_TLS_CERT_FILE. */
  SHOAL_NATS_TLS_KEY_FILE: z.string().min(1).optional(),
});
export type NatsTlsConfig = z.infer<typeof natsTlsConfig>;

/** Default of SHOAL_NATS_PING_INTERVAL_MS, in ms. */
export const DEFAULT_NATS_PING_INTERVAL_MS = 10_000;
/** Default of SHOAL_NATS_RECONNECT_JITTER_MS, in ms. */
export const DEFAULT_NATS_RECONNECT_JITTER_MS = 1000;

/**
 * How a NATS connection notices that its server went silent, and spreads its reconnects.
 * `pingMs` and `jitterMs` are the defaults: a fleet of agents pings less often and spreads
 * its reconnects wider than the few trusted services.
 */
export function natsLivenessFields(pingMs: number, jitterMs: number) {
  return {
    /**
     * How often the client pings its NATS server, in ms (default 10 000; agents 20 000),
     * each connection at a random interval up to half as long again, so that a fleet's pings
     * do not come in step. After two pings go unanswered the connection is dropped and another
     * server is dialled: a server that vanished (powered off, partitioned, firewalled: packets
     * dropped, no reset) is noticed, rather than after the client library's default of 2 min
     * per ping, and once the network is back the connection is made anew rather than waiting
     * on TCP's backed-off resends.
     */
    SHOAL_NATS_PING_INTERVAL_MS: envInt(pingMs).refine((n) => n >= 1000, 'must be at least 1000'),
    /**
     * Up to how much later than the half second between attempts each reconnect is made, at
     * random, in ms (default 1000; agents 3000): thousands of agents that lost their server at
     * once come back spread over seconds, not in one burst.
     */
    SHOAL_NATS_RECONNECT_JITTER_MS: envInt(jitterMs),
  };
}

/** The services' NATS liveness settings (agents: `natsLivenessFields` with their defaults). */
export const natsLivenessConfig = z.object(
  natsLivenessFields(DEFAULT_NATS_PING_INTERVAL_MS, DEFAULT_NATS_RECONNECT_JITTER_MS),
);

/**
 * The problem, if any, with a listener's announced URL: clients speak what its scheme says, so
 * it must be `https://` exactly when the listener has a certificate (`cert`, the variable of
 * its certificate file; `key`, of its key).
 */
export function announcedUrlProblems(
  env: Record<string, string | undefined>,
  names: { readonly url: string; readonly cert: string; readonly key: string },
): string[] {
  const tls = (env[names.cert] ?? '') !== '';
  const url = env[names.url] ?? '';
  if (url === '' || url.startsWith('https:') === tls) {
    return [];
  }
  return [
    tls
      ? `${names.url}: must be https:// when the listener serves TLS (${names.cert})`
      : `${names.url}: https:// needs ${names.cert} and ${names.key}`,
  ];
}

/** The text every secret in the deploy files starts as, until an operator replaces it. */
const PLACEHOLDER = /change-?me/i;

/** Throws when `text` (a secret read from a file) is still a deploy file's placeholder. */
export function refusePlaceholderSecret(what: string, text: string): void {
  if (PLACEHOLDER.test(text)) {
    throw new ConfigError([
      `${what}: still the deploy files' placeholder ("change-me..."); replace it with a real secret`,
    ]);
  }
}

/**
 * Problems for every `SHOAL_*` variable that still holds a deploy file's placeholder secret
 * (NATS passwords inside URLs, S3 keys, webhook tokens), as `NAME: reason`.
 */
export function placeholderProblems(env: Record<string, string | undefined>): string[] {
  return Object.entries(env)
    .filter(([name, value]) => name.startsWith('SHOAL_') && PLACEHOLDER.test(value ?? ''))
    .map(
      ([name]) =>
        `${name}: holds the deploy files' placeholder secret ("change-me..."); replace it with a real secret`,
    );
}
