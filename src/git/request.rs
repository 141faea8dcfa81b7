//! One fetch request on a connection of its own, made by dagsnap rather than gix's fetch: the
//! wants, the haves and a filter it names, one round, and the pack indexed by
//! [`super::index_pack`] (gix's fetch negotiates with every ref and indexes with its own
//! indexer, which holds objects whole, and has no filter). Every pack the cache receives comes
//! through here: [`super::fetch`] for a commit, [`super::filtered`] for part of one. The ref
//! listing before it is gix's.

use gix::protocol::fetch::negotiate::{one_round, Action, Round};
use gix::protocol::fetch::{Arguments, Response};
use gix::ObjectId;

use super::fetch::Conversation;
use super::SourceError;

impl Conversation<'_> {
    /// One fetch request on a connection of its own: `wants`, `haves`, `filter` if the server
    /// filters (returns whether it was applied), and `--depth` if `deepen`.
    pub(super) fn request(
        &self,
        wants: &[ObjectId],
        haves: &[ObjectId],
        filter: Option<&'static str>,
        deepen: bool,
    ) -> Result<bool, SourceError> {
        let (repo, remote) = (self.repo, self.remote);
        let git_remote = self.make_remote(&[])?;
        let mut connection = self.open_transport(&git_remote)?;
        let options = self.transport_options()?;
        let credentials = self.credentials_fn();
        let authenticate = match credentials {
            Some(f) => f,
            None => connection.configured_credentials_for_current_url(),
        };
        let transport = connection.transport_mut();
        if let Some(options) = &options {
            transport
                .configure(&**options)
                .map_err(|e| self.error("connect to", &gix::Error::from_error(e)))?;
        }
        let mut progress = self.progress.add_child("handshake");
        let mut handshake = gix::protocol::handshake(
            &mut *transport,
            gix::protocol::transport::Service::UploadPack,
            authenticate,
            Vec::new(),
            &mut progress,
        )
        .map_err(|e| self.error("connect to", &e))?;
        let version = handshake.server_protocol_version;
        let features =
            gix::protocol::Command::Fetch.default_features(version, &handshake.capabilities);
        let filter = filter.filter(|_| features.iter().any(|(name, _)| *name == "filter"));
        let shallow = if deepen {
            remote.shallow()
        } else {
            gix::remote::fetch::Shallow::NoChange
        };
        let shallow_file = repo
            .shallow_file()
            .map_err(|e| self.error("fetch from", &e))?;
        let mut request = Request {
            wants,
            haves,
            filter,
        };
        let fetched = super::pages::while_running(|| {
            gix::protocol::fetch(
                &mut request,
                |pack, _progress, interrupt| {
                    let received = super::index_pack::receive(pack, repo, interrupt)
                        .map_err(gix::Error::from_error)?;
                    tracing::debug!(pack = %received.pack.display(), objects = received.objects, "received a pack");
                    Ok(true)
                },
                self.progress.add_child("fetch"),
                self.interrupt,
                gix::protocol::fetch::Context {
                    handshake: &mut handshake,
                    transport: &mut *transport,
                    user_agent: (
                        "agent",
                        Some(concat!("dagsnap/", env!("CARGO_PKG_VERSION")).into()),
                    ),
                    trace_packetlines: false,
                },
                gix::protocol::fetch::Options {
                    shallow_file,
                    shallow: &shallow,
                    tags: gix::protocol::fetch::Tags::None,
                    reject_shallow_remote: false,
                },
            )
        });
        if version == gix::protocol::transport::Protocol::V2 {
            let _ = gix::protocol::indicate_end_of_interaction(&mut *transport, false);
        }
        fetched.map_err(|e| self.error("fetch from", &e))?;
        Ok(filter.is_some())
    }
}

/// One request: these wants, these haves, this filter, and done (one round).
struct Request<'a> {
    wants: &'a [ObjectId],
    haves: &'a [ObjectId],
    filter: Option<&'static str>,
}

impl gix::protocol::fetch::Negotiate for Request<'_> {
    fn mark_complete_and_common_ref(&mut self) -> gix::Result<Action> {
        Ok(Action::MustNegotiate {
            remote_ref_target_known: Vec::new(),
        })
    }

    fn add_wants(&mut self, arguments: &mut Arguments, _known: &[bool]) -> bool {
        for want in self.wants {
            arguments.want(want);
        }
        if let Some(filter) = self.filter.filter(|_| arguments.can_use_filter()) {
            arguments.filter(filter);
        }
        !self.wants.is_empty()
    }

    fn one_round(
        &mut self,
        _state: &mut one_round::State,
        arguments: &mut Arguments,
        _previous: Option<&Response>,
    ) -> gix::Result<(Round, bool)> {
        for have in self.haves {
            arguments.have(have);
        }
        let sent = self.haves.len();
        let round = Round {
            haves_sent: sent,
            in_vain: 0,
            haves_to_send: sent,
            previous_response_had_at_least_one_in_common: false,
        };
        Ok((round, true))
    }
}
