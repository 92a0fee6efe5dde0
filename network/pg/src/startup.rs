//! Startup and authentication: the password is an annals token; the startup packet's
//! `database` is the annals database, which the token must be allowed to read.

use std::fmt::Debug;
use std::sync::Arc;

use annals_auth::{Action, AuthError, Grant};
use annals_query::system::SCHEMA as SYSTEM;
use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, METADATA_DATABASE, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tracing::{debug, info};

use crate::query::Conn;
use crate::session::{Session, SERVER_VERSION};

/// A `FATAL` error: the client is told and the connection closed.
pub(crate) fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Conn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.permit.is_none() {
                    return Err(fatal(
                        "53300",
                        format!(
                            "sorry, too many clients already (at most {} PostgreSQL connections)",
                            self.shared.max_connections
                        ),
                    ));
                }
                if self.shared.tokens.is_enabled() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    self.accept(client, Grant::all()).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let grant = match self.shared.tokens.authenticate(Some(&pwd.password)) {
                    Ok(g) => g,
                    Err(e) => {
                        info!(%user, peer = %client.socket_addr(), "PostgreSQL login refused: {e}");
                        return Err(fatal(
                            "28P01",
                            format!(
                                "password authentication failed for user \"{user}\": the password must be an annals token ({e})"
                            ),
                        ));
                    }
                };
                self.accept(client, grant).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Conn {
    /// Checks the grant against the database, opens the session and ends the startup.
    async fn accept<C>(&self, client: &mut C, grant: Grant) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let md = client.metadata();
        // As in PostgreSQL, the database defaults to the user name.
        let Some(db) = md
            .get(METADATA_DATABASE)
            .or_else(|| md.get(METADATA_USER))
            .cloned()
        else {
            return Err(fatal(
                "3D000",
                "no database given: connect with a database (psql -d <db>)".to_string(),
            ));
        };
        if let Err(e) = grant.check(Action::Read, Some(&db)) {
            let code = match e {
                AuthError::Forbidden { .. } => "42501",
                _ => "28000",
            };
            return Err(fatal(code, format!("permission denied: {e}")));
        }
        let service = &self.shared.service;
        if db != SYSTEM && !service.databases().contains(&db) {
            return Err(fatal(
                "3D000",
                format!(
                    "database \"{db}\" does not exist (a database appears with its first write)"
                ),
            ));
        }
        let session = Session::open(service, &db, &grant)
            .map_err(|e| fatal("XX000", format!("cannot open a session on \"{db}\": {e}")))?;
        let _ = self.session.set(Arc::new(session));
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = SERVER_VERSION.to_string();
        params.search_path = db.clone();
        params.is_superuser = false;
        params.default_transaction_read_only = true;
        debug!(%db, token = grant.id.as_deref().unwrap_or("-"), "PostgreSQL session opened");
        finish_authentication(client, &params).await
    }
}
