//! GitHub Copilot's OpenAI-compatible API. Bring-your-own-key only: Copilot tokens belong to
//! one user, so pooling them is not offered. Errors are in OpenAI's shape.

use super::{ApiRoute, Auth, ErrorShape, ProviderSpec};

pub const COPILOT: ProviderSpec = ProviderSpec {
    default_base_url: "https://api.githubcopilot.com",
    default_send_path: "/chat/completions",
    probe_path: "/models",
    byok_only: true,
    auth: Auth::Bearer,
    errors: ErrorShape::OpenAi,
    routes: &[
        ("/chat/completions", ApiRoute::ChatCompletions),
        ("/v1/chat/completions", ApiRoute::ChatCompletions),
        ("/responses", ApiRoute::Responses),
        ("/v1/responses", ApiRoute::Responses),
    ],
    quota_signals: &[],
};
