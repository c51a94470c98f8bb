//! [`redact_url`]: a Redis URL fit for logs and error messages, with every secret it may carry
//! masked.

/// Query parameters that carry a password (`redis+unix:///run/redis.sock?pass=secret`).
const SECRET_PARAMETERS: [&str; 2] = ["pass", "password"];

/// `redis://user:secret@host` → `redis://user:***@host`.
///
/// The userinfo is everything before the last `@` of the URL (before its query), so a password
/// that contains `/`, `:` or `@` is masked whole; a user name is kept, a lone token
/// (`redis://token@host`) is masked. `pass`/`password` query parameters are masked too. When in
/// doubt it masks more, never less.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut redacted = redact_userinfo(head);
    if let Some(query) = query {
        redacted.push('?');
        redacted.push_str(&redact_query(query));
    }
    redacted
}

fn redact_userinfo(head: &str) -> String {
    let Some((scheme, rest)) = head.split_once("://") else {
        return head.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return head.to_owned();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{masked}{}", &rest[at..])
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://default:s3cret@10.0.0.1:6379/0"),
            "redis://default:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("unix:/tmp/redis.sock"), "unix:/tmp/redis.sock");
    }

    #[test]
    fn passwords_with_slashes_and_at_signs_are_masked_whole() {
        assert_eq!(
            redact_url("redis://gw:pa/ss/word@h:6379/2"),
            "redis://gw:***@h:6379/2"
        );
        assert_eq!(redact_url("rediss://gw:p@ss@h"), "rediss://gw:***@h");
        assert_eq!(redact_url("redis://a/b@h"), "redis://***@h");
        assert_eq!(
            redact_url("http://user:s/e:c@example.com/x"),
            "http://user:***@example.com/x"
        );
        assert_eq!(
            redact_url("redis://:pa/ss@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redact_url("rediss://u:a@b/c@h/0"), "rediss://u:***@h/0");
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_userinfo() {
        assert_eq!(
            redact_url("https://gw:8443/api?x=@"),
            "https://gw:8443/api?x=@"
        );
    }

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("unix:///r.sock?Password=x&user=u"),
            "unix:///r.sock?Password=***&user=u"
        );
    }
}
