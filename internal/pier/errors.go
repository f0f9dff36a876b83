package pier

import (
	"errors"
	"fmt"
)

// Kind classifies an error so that callers (and the API's status mapping)
// decide by kind, never by message.
type Kind int

// Error kinds.
const (
	Internal     Kind = iota // unexpected; the default for unclassified errors
	Invalid                  // bad input from the caller
	NotFound                 // the named thing does not exist
	Conflict                 // exists already, or clashes with work under way
	Unauthorized             // missing or wrong credentials
	Unavailable              // a dependency is not ready; try again
	Failed                   // the operation ran and did not succeed (a build, a deploy)
	Timeout                  // waited for a condition that did not come in time
	Precondition             // the target is not in a state that allows the operation
)

// Error is an error with a kind and a message meant for the user.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // optional cause
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error of kind k.
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// KindOf reports the kind of the first *Error in err's chain, or Internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// kindNames name error kinds where they travel as text: streamed errors,
// operations' records.
var kindNames = [...]string{Internal: "internal", Invalid: "invalid", NotFound: "not_found",
	Conflict: "conflict", Unauthorized: "unauthorized", Unavailable: "unavailable", Failed: "failed",
	Timeout: "timeout", Precondition: "precondition"}

// String names the kind: "invalid", "not_found"...
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "internal"
}

// KindNamed is the kind String names; Internal for a name it does not know.
func KindNamed(name string) Kind {
	for k, n := range kindNames {
		if n == name {
			return Kind(k)
		}
	}
	return Internal
}
