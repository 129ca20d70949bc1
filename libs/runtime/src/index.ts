/** @shoal/runtime: what every Shoal service needs to start, log, measure and stop. */
export {
  announcedUrlProblems,
  ConfigError,
  envBool,
  envInt,
  envListen,
  envLogLevel,
  loadConfig,
  natsLivenessConfig,
  natsLivenessFields,
  natsTlsConfig,
  placeholderProblems,
  refusePlaceholderSecret,
  type ListenAddress,
  type NatsTlsConfig,
} from './config.js';
export {
  envPieceAuth,
  pieceAuthPreHandler,
  PieceTokenVerifier,
  readHandoutPrivateKey,
  readHandoutPublicKeys,
  TOKEN_CLOCK_SKEW_MS,
  type PieceAuthDeps,
  type PieceAuthResult,
  type PieceRefusal,
} from './piece-auth.js';
export { isAbortError, ShoalError, UNREACHABLE_CODES, unreachableCode } from './errors.js';
export { EventLoopSlice } from './event-loop-slice.js';
export {
  httpLimitsConfig,
  httpServerOptions,
  limitConnections,
  type HttpLimitsConfig,
} from './http-limits.js';
export {
  clientVerified,
  httpsFactory,
  secureOptions,
  watchTlsFiles,
  type HttpsFactory,
  type ServerTlsFiles,
  type TlsFileContents,
  type TlsFileWatch,
} from './https.js';
export {
  exitOnStartupError,
  runUntilSignal,
  untilAborted,
  type RunOptions,
  type Service,
} from './lifecycle.js';
export { runService, type ServiceConfigBase, type ServiceEntry } from './main.js';
export { createLogger, type Logger, type LoggerSettings } from './logger.js';
export { createMetrics, type ServiceMetrics } from './metrics.js';
export { RateLimiter } from './rate-limit.js';
export {
  drainOrCut,
  listenOn,
  registerOpsRoutes,
  urlHost,
  type DrainOptions,
  type OpsRouteDeps,
} from './http-ops.js';
export { startTelemetry, tracingEnabled, type Telemetry } from './telemetry.js';
export {
  contextFromHttp,
  failSpan,
  injectHttp,
  activeSpan,
  markSpan,
  runInContext,
  SpanKind,
  SpanStatusCode,
  startSpan,
  traceFields,
  tracer,
  withCallerServerSpan,
  withServerSpan,
  withSpan,
  withSpanOnFailure,
  type Attributes,
  type Context,
  type Span,
  type SpanOptions,
} from './tracing.js';
