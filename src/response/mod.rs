//! What goes back to the client: the response body (streamed, with the request's access record
//! riding on it), certgate's own JSON answers, and the access-log line written when a response
//! ends.

pub mod access_log;
pub mod body;
pub mod in_flight;
pub mod reply;
