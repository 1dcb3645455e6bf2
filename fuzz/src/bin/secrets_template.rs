//! The secrets-agent's file templates (Jinja2 syntax): a template (NUL) the secret's data
//! (JSON), compiled and rendered as the agent does.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (template, secret) = sidecars_fuzz::split2(data);
        if let (Some(template), Some(secret)) =
            (sidecars_fuzz::text(template), sidecars_fuzz::text(secret))
        {
            secrets_agent::fuzzing::render_template(template, secret);
        }
    });
}
