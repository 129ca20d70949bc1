/** @shoal/proto: Shoal's wire contracts and OCI grammar. Everything public is listed here. */
export {
  DIGEST_ALGORITHMS,
  DigestHasher,
  digestOf,
  isDigest,
  parseDigest,
  type Digest,
  type DigestAlgorithm,
} from './oci/digest.js';
export { OciParseError, type OciParseErrorCode } from './oci/errors.js';
export {
  MAX_NAME_LENGTH,
  parseManifestReference,
  parseRepositoryName,
  parseTag,
  type ManifestReference,
} from './oci/name.js';
export {
  DEFAULT_REGISTRY,
  formatImageReference,
  parseImageReference,
  parseRegistryHost,
  type ImageReference,
} from './oci/reference.js';
export { KV_BUCKETS, STREAMS, type KvSpec, type Retention, type StreamSpec } from './streams.js';
export {
  digestSubjectTokens,
  digestText,
  jobId,
  labelSelector,
  MAX_PIECE_RANGES,
  peerId,
  peerInfo,
  pieceRanges,
  registryHost,
  repositoryName,
  type PeerInfo,
  type PieceRanges,
} from './messages/common.js';
export { handout, handoutSubject, type Handout } from './messages/handout.js';
export {
  checkHandoutClaims,
  handoutTokenClaims,
  MAX_HANDOUT_TOKEN_LENGTH,
  PIECE_AUTH_SCHEME,
  MAX_NOT_FROM_PEERS,
  PIECE_PEER_HEADER,
  PIECE_NOT_FROM_HEADER,
  PIECE_UNHEARD_HEADER,
  PIECE_STARVED_HEADER,
  PIECE_RATIONED_HEADER,
  MIN_STARVED_LATE_MS,
  starvedLateMs,
  pieceAuthHeaders,
  signHandoutToken,
  notFromHeader,
  notFromPeers,
  verifyHandoutToken,
  type HandoutTokenClaims,
  type HandoutTokenRefusal,
  type PieceRequestScope,
} from './handout-token.js';
export {
  PEER_GONE_SUBJECTS,
  peerGone,
  peerGoneSubject,
  type PeerGone,
} from './messages/peer-gone.js';
export {
  isPieceHash,
  PIECE_HASHES_SUBJECTS,
  pieceHashes,
  pieceHashesSubject,
  type PieceHashes,
} from './messages/piece-hashes.js';
export {
  PIECES_VERIFIED_SUBJECTS,
  pieceListDigest,
  piecesVerified,
  piecesVerifiedSubject,
  recordSignedText,
  signPiecesVerified,
  verifyPiecesVerified,
  type PiecesVerified,
  type PiecesVerifiedClaims,
} from './messages/pieces-verified.js';
export {
  SEED_FAILURE_REASONS,
  seedFailed,
  type SeedFailed,
  type SeedFailureReason,
} from './messages/seed-failed.js';
export {
  SEED_INTAKE_SUBJECTS,
  SEED_WAIT_NOTICE_MAX_MS,
  seedIntake,
  seedIntakeSubject,
  type SeedIntake,
} from './messages/seed-intake.js';
export {
  PIECE_HAVE_SUBJECTS,
  pieceHave,
  pieceHaveSubject,
  type PieceHave,
} from './messages/piece-have.js';
export {
  PIECE_WANT_SUBJECTS,
  pieceWant,
  pieceWantSubject,
  legacyPieceWantSubject,
  type PieceWant,
} from './messages/piece-want.js';
export {
  PREHEAT_COMMAND_SUBJECT,
  preheatCommand,
  preheatScope,
  type PreheatCommand,
} from './messages/preheat-command.js';
export {
  preheatProgress,
  preheatProgressSubject,
  preheatState,
  type PreheatProgress,
} from './messages/preheat-progress.js';
export {
  preheatReport,
  preheatReportSubject,
  preheatReportSubjects,
  type PreheatReport,
} from './messages/preheat-report.js';
export {
  PREHEAT_NODES_SUBJECT,
  preheatNodes,
  preheatNodesConsumer,
  type PreheatNodes,
} from './messages/preheat-nodes.js';
export { agentPresence, selectorMatches, type AgentPresence } from './messages/agent-presence.js';
export { seedRequest, seedRequestSubject, type SeedRequest } from './messages/seed-request.js';
export {
  PROTOCOL_VERSION,
  decodeMessage,
  encodeMessage,
  encodeUnchecked,
  messageSchemas,
  type Decoded,
  type Message,
  type MessageType,
} from './messages/index.js';
export {
  decodePieceBitmap,
  encodePieceBitmap,
  MAX_BLOB_BYTES,
  MAX_PIECE_BITMAP_BYTES,
  pieceBounds,
  pieceCount,
  piecePath,
  pieceSizeFor,
  rangesInclude,
  rangesSize,
  toRanges,
} from './pieces.js';
export {
  forwardedWantSubject,
  TRACKER_REPLICA_SUBJECTS,
  trackerReplica,
  trackerReplicaSubject,
  type TrackerReplica,
} from './messages/tracker-replica.js';
export { wantForwarded, type WantForwarded } from './messages/want-forwarded.js';
export { haveDue, wantPacing, WantPacer, type WantPacing } from './pacing.js';
