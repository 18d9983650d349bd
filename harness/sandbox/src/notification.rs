//! The notification provider: push and e-mail messages, accepted for sending later (202).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Shared;
use crate::effects::{EffectKind, NewEffect};
use crate::exchange::{self, Mutation, Outcome, Stored, check_text};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NotificationRequest {
    order_id: String,
    /// The message's template, such as `order_confirmed`.
    template: String,
    /// An e-mail address or a device token: the sandbox does not tell them apart.
    to: String,
}

/// `POST /notifications`
pub(crate) async fn send(
    State(shared): State<Arc<Shared>>,
    request: Mutation<NotificationRequest>,
) -> Response {
    let body = &request.body;
    let checked = check_text("order_id", &body.order_id)
        .and_then(|()| check_text("template", &body.template))
        .and_then(|()| check_text("to", &body.to));
    if let Err(problem) = checked {
        return problem.into_response();
    }
    exchange::exchange(shared, request, apply_notification, |_, ()| {}).await
}

fn apply_notification(state: &mut exchange::State, body: NotificationRequest) -> Outcome<()> {
    let notification_id = state.ids.next("ntf");
    let effect = NewEffect {
        kind: EffectKind::Notification,
        order_id: body.order_id,
        amount_minor: None,
        currency: None,
    };
    let response = json!({"notification_id": notification_id});
    Outcome::applied(effect, Stored::new(StatusCode::ACCEPTED, response))
}
