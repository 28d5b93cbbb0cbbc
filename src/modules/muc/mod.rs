//! Multi-user chat (XEP-0045): a chat service at `<subdomain>.<host>` for
//! each host, served in-process (the route table sends the domain to
//! [`Muc::deliver_to_service`], which queues it for the service's task).
//!
//! One task owns every room of the service ([`service`]); a room's whole
//! state — occupants, affiliations, roles, configuration, subject,
//! history — is one [`room::Room`] value, so a later cluster can place
//! each room on one node. The files follow the protocol's concerns:
//! `presence` (join, leave, nick changes, status codes), `message`
//! (group chat, private messages, subject, invitations), `admin` (roles,
//! affiliations, the owner's configuration and destruction), `config`
//! (the `muc#roomconfig` form), `fanout` (a stanza serialized once for
//! every occupant), `persist` (what a persistent room writes: whole once,
//! then only the changed rows), `avatar` (the room's vCard, XEP-0486),
//! `mentions` (push for absent members named in a message), `room_list`
//! (the service's disco#items with RSM paging), `placement` (which
//! cluster node serves a room).

pub mod admin;
pub mod archive;
pub mod avatar;
pub mod config;
pub mod control;
pub mod fanout;
pub mod hats;
pub mod iq_relay;
pub mod mentions;
pub mod message;
pub mod moderate;
pub mod nick;
pub mod occupancy;
pub mod persist;
pub mod placement;
pub mod presence;
pub mod room;
pub mod room_list;
pub mod service;
pub mod voice;

pub use service::Muc;

/// The MUC protocol's namespaces.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
/// XEP-0359 stanza ids the room stamps on messages it broadcasts.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0421 occupant ids.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0410 self-ping optimisation: the service answers a ping to the
/// sender's own occupant JID itself.
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0249 direct invitations (passed through untouched).
pub const NS_CONFERENCE: &str = "jabber:x:conference";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_DELAY: &str = "urn:xmpp:delay";
