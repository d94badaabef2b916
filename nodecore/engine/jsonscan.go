package engine

// A minimal scanner over the top level of a JSON object, so a request body
// can have one field replaced without decoding and re-encoding the rest
// (bodies reach megabytes with images or long contexts).

// topLevelValue returns the byte span [start,end) of the value of key in
// the JSON object b, comparing the key's raw (still escaped) text. ok is
// false when b is not an object or has no such key.
func topLevelValue(b []byte, key string) (start, end int, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return 0, 0, false
	}
	i++
	for {
		i = skipWS(b, i)
		if i >= len(b) || b[i] == '}' {
			return 0, 0, false
		}
		if b[i] != '"' {
			return 0, 0, false
		}
		kEnd := skipString(b, i)
		if kEnd < 0 {
			return 0, 0, false
		}
		k := b[i+1 : kEnd-1]
		i = skipWS(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return 0, 0, false
		}
		i = skipWS(b, i+1)
		vEnd := skipValue(b, i)
		if vEnd < 0 {
			return 0, 0, false
		}
		if string(k) == key {
			return i, vEnd, true
		}
		i = skipWS(b, vEnd)
		if i >= len(b) {
			return 0, 0, false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return 0, 0, false
		default:
			return 0, 0, false
		}
	}
}

// skipWS returns the index of the first non-whitespace byte at or after i.
func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i]=='"',
// or -1 when it does not end.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the index just past the value starting at b[i], or -1
// when it does not end. Nested objects and arrays are skipped by depth,
// minding strings; scalars run to the next delimiter.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := skipString(b, j)
				if end < 0 {
					return -1
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i {
		return -1
	}
	return j
}
