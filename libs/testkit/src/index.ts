/** @shoal/testkit: real servers for tests, on random ports in temporary directories. */
export {
  startContainerd,
  writeDirectHosts,
  writeMirrorHosts,
  type Containerd,
} from './containerd.js';
export {
  generateImage,
  MEDIA_TYPES,
  pushImage,
  type Descriptor,
  type GeneratedImage,
  type ImageSpec,
} from './image.js';
export {
  generateHandoutKeys,
  signTestToken,
  testHandoutKeys,
  testRecordKeys,
  writeHandoutPrivateKey,
  writeHandoutPublicKeys,
  writeRecordPrivateKey,
  writeRecordPublicKeys,
  type HandoutKeys,
} from './handout-keys.js';
export { startNats, type NatsOptions, type NatsServer } from './nats.js';
export {
  formatTraceTree,
  startOtlpReceiver,
  traceTree,
  type CollectedSpan,
  type OtlpReceiver,
  type SpanEvent,
  type SpanKindName,
  type TraceNode,
  traceView,
  type TraceView,
} from './otlp.js';
export {
  freePort,
  inNetns,
  makeTempDir,
  requireBinary,
  run,
  startProcess,
  urlHost,
  waitFor,
  type Placement,
  type RunningProcess,
} from './process.js';
export {
  startRegistry,
  type Registry,
  type RegistryOptions,
  type RegistryRequest,
} from './registry.js';
export {
  listeningPorts,
  procCostBetween,
  readProcCost,
  readThreadCpu,
  type ProcCost,
  type ThreadCpu,
} from './proc.js';
export { startS3, type S3Options, type S3Server } from './s3.js';
export { makeTestCa, type IssuedCert, type TestCa } from './tls.js';
export { skopeoCopy, type CopyOptions } from './skopeo.js';
export {
  AGENT_MAIN,
  FAST_SWARM_ENV,
  PREHEAT_CLI,
  serviceMain,
  serviceNodeFlags,
  startAgent,
  startSeedServer,
  startTracker,
  startWatcher,
  WATCHER_TOKEN,
  type AgentOptions,
  type AgentProcess,
  type BuildChoice,
  type PieceTls,
  type SeedServerOptions,
  type ServiceProcess,
  type WatcherOptions,
} from './services.js';
export { scrapeMetrics, type MetricsSnapshot } from './metrics.js';
export { getText, type GetTextOptions } from './http-get.js';
export { mib, percent, ratio, seconds, table } from './report.js';
export { Teardown } from './teardown.js';
export {
  startTokenServer,
  type TokenServer,
  type TokenServerOptions,
  type TokenUser,
} from './token-server.js';
export {
  startFaultProxy,
  type FaultProxy,
  type FaultProxyCounts,
  type ProxiedRequest,
  type StorageRequest,
  type FaultProxyOptions,
  type RegistryFault,
} from './fault-proxy.js';
export { NetLab, type LabHost, type LinkShape } from './netlab.js';
export { seededRandom } from './random.js';
