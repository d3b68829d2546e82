//! The WhatsApp Cloud API contract, in one room: what we send and how ([`client`]), what each
//! of Meta's answers means ([`codes`], the one table of Meta's error codes), how fast a number
//! and a recipient may be sent to ([`pacing`]), each number's state kept in the database (holds,
//! circuits, tier counts: [`numbers`]), and what Meta's status webhooks say ([`statuses`]).
//!
//! It decides; it moves no job. The job handler (`crate::delivery::live`) acts on its answers,
//! and asks the queue (`crate::queue::store`) to move jobs. docs/delivery.md and docs/numbers.md
//! have the operator's view.

pub mod client;
pub mod codes;
pub mod numbers;
pub mod pacing;
pub mod statuses;
