/**
 * @shoal/pieces: the piece engine the agent and the seed server share — buffers, the piece
 * server, the piece picker and the piece file.
 */
export { PieceBuffers } from './buffers.js';
export {
  askingPeerId,
  pieceHandler,
  PIECE_ROUTE,
  type PieceAsk,
  type PieceRequest,
  type PieceResult,
  type PieceRoute,
  type PieceServerOptions,
  type PieceSource,
  type PieceTicket,
} from './server.js';
export {
  endgameLate,
  nextTypicalMs,
  orderPieces,
  PiecePicker,
  windowEnd,
  type PickedRequest,
  type PickerOptions,
  type PickerSettings,
  type PieceCandidate,
  type RequestOutcome,
  type SourceAdvert,
} from './picker.js';
export { COALESCE_BYTES, PieceFile, type PieceFileOptions } from './piece-file.js';
export { freeDiskBytes, isDiskFull } from './disk.js';
