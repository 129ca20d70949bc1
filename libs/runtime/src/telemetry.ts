/**
 * OpenTelemetry start-up: traces exported over OTLP/HTTP, configured by the standard `OTEL_*`
 * variables, with W3C trace-context propagation. Metrics stay with prom-client (`/metrics`)
 * and logs with pino (which adds `trace_id`/`span_id`, see logger.ts), so only the tracer
 * provider is registered.
 *
 * Without an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), with `OTEL_SDK_DISABLED=true` or with
 * `OTEL_TRACES_EXPORTER=none`, nothing is started and the SDK is not even loaded: spans are
 * no-ops and nothing is sent anywhere.
 */
import { ConfigError } from './config.js';

export interface Telemetry {
  /** True when spans are exported. */
  readonly enabled: boolean;
  /**
   * Exports the spans still buffered and stops the SDK; waits at most `timeoutMs`
   * (default 5000) so an unreachable collector never holds up a shutdown.
   */
  shutdown(timeoutMs?: number): Promise<void>;
}

/** Trace export protocols supported (`OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`). */
const PROTOCOLS = ['http/protobuf', 'http/json'] as const;
type Protocol = (typeof PROTOCOLS)[number];

/** Whether `env` asks for traces to be exported. */
export function tracingEnabled(env: Readonly<Record<string, string | undefined>>): boolean {
  const set = (name: string): boolean => (env[name] ?? '').trim() !== '';
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') {
    return false;
  }
  if ((env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase() === 'none') {
    return false;
  }
  return set('OTEL_EXPORTER_OTLP_ENDPOINT') || set('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
}

function protocolOf(env: Readonly<Record<string, string | undefined>>): Protocol {
  const value = (
    env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ??
    env.OTEL_EXPORTER_OTLP_PROTOCOL ??
    'http/protobuf'
  ).trim();
  const known = PROTOCOLS.find((p) => p === value);
  if (known === undefined) {
    throw new ConfigError([
      `OTEL_EXPORTER_OTLP_PROTOCOL: "${value}" is not supported; use ${PROTOCOLS.join(' or ')}`,
    ]);
  }
  return known;
}

/** Where spans go: the traces endpoint as given, or `/v1/traces` below the base endpoint. */
function tracesUrl(env: Readonly<Record<string, string | undefined>>): string {
  const traces = (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '').trim();
  if (traces !== '') {
    return traces;
  }
  const base = (env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').trim();
  return `${base.endsWith('/') ? base : `${base}/`}v1/traces`;
}

/**
 * Starts tracing for `service` (the resource's `service.name`; `OTEL_SERVICE_NAME` overrides
 * it). Call it first in a service's main, and `shutdown()` last when the service has closed.
 * `env` is the process environment: the endpoint, protocol and service name are read from it
 * here, and the SDK reads the other `OTEL_*` variables (headers, timeout, sampler, batch
 * settings) from the process environment itself.
 */
export async function startTelemetry(
  service: string,
  env: Readonly<Record<string, string | undefined>>,
): Promise<Telemetry> {
  if (!tracingEnabled(env)) {
    return { enabled: false, shutdown: () => Promise.resolve() };
  }
  const protocol = protocolOf(env);
  const url = tracesUrl(env);
  const { NodeSDK, core } = await import('@opentelemetry/sdk-node');
  const traceExporter =
    protocol === 'http/json'
      ? new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter({ url })
      : new (await import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter({ url });
  const serviceName = (env.OTEL_SERVICE_NAME ?? '').trim();
  const sdk = new NodeSDK({
    serviceName: serviceName === '' ? service : serviceName,
    traceExporter,
    textMapPropagator: new core.CompositePropagator({
      propagators: [new core.W3CTraceContextPropagator(), new core.W3CBaggagePropagator()],
    }),
    // Explicit spans only; metrics and logs have their own paths.
    instrumentations: [],
    metricReaders: [],
    logRecordProcessors: [],
  });
  sdk.start();
  let stopped: Promise<void> | undefined;
  return {
    enabled: true,
    shutdown: (timeoutMs = 5000) => {
      stopped ??= new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        timer.unref();
        sdk.shutdown().then(
          () => {
            clearTimeout(timer);
            resolve();
          },
          () => {
            clearTimeout(timer);
            resolve();
          },
        );
      });
      return stopped;
    },
  };
}
