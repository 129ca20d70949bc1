/**
 * Structured JSON logs with pino; credentials are redacted wherever they would appear. A line
 * written inside a span carries its `trace_id` and `span_id`, to find the trace from the log.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';

import { traceFields } from './tracing.js';

export type { Logger } from 'pino';

/** Paths whose values never reach a log line. */
const REDACT = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  'request.headers.authorization',
  'password',
  'credentials',
];

export interface LoggerSettings {
  readonly service: string;
  readonly level: LoggerOptions['level'];
  /** Where lines go; standard output by default. Tests pass a stream to read them back. */
  readonly destination?: NodeJS.WritableStream;
}

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? 'info',
    base: { service: settings.service },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    mixin: traceFields,
  };
  return settings.destination === undefined ? pino(options) : pino(options, settings.destination);
}
