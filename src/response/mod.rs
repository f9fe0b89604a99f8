//! What goes back to the client: the response body (streamed, with the request's access record
//! riding on it), certgate's own JSON answers, and the access-log line written when a response
//! ends.

pub(crate) mod access_log;
pub(crate) mod body;
pub(crate) mod in_flight;
pub(crate) mod reply;
